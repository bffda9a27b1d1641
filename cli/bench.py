"""``compress bench``: side-by-side size, MACs, peak memory, latency and metric of models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.options import AllowImportOpt, SafeOpt
from cli.output import console, handle_errors


def bench(
    models: Annotated[
        list[Path],
        typer.Argument(
            help="Plans (their original model), compress .safetensors, .onnx files or checkpoints "
            "(with --architecture). Ratios are to the first.",
            show_default=False,
        ),
    ],
    architecture: Annotated[
        str | None,
        typer.Option(
            "--architecture", "-a", help="'package.module:factory' for plain checkpoints."
        ),
    ] = None,
    input_shape: Annotated[
        list[str] | None,
        typer.Option("--input", help="Example input NAME=SHAPE[:DTYPE], e.g. x=1x1x8x8."),
    ] = None,
    runtime: Annotated[
        list[str] | None, typer.Option("--runtime", help="onnxruntime and/or torch (repeat).")
    ] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="cpu and/or cuda (repeat).")
    ] = None,
    batch: Annotated[
        list[int] | None,
        typer.Option("--batch", "-b", help="Batch size (repeat); the first is the headline."),
    ] = None,
    seq: Annotated[
        list[int] | None, typer.Option("--seq", help="Sequence length for text models (repeat).")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="Threads per runtime (default: the physical cores)."),
    ] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", help="Warm-up calls.")] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Interleaved rounds.")] = None,
    iterations: Annotated[
        int | None, typer.Option("--iterations", help="Timed calls per model per round.")
    ] = None,
    no_memory: Annotated[
        bool, typer.Option("--no-memory", help="Skip the peak-memory probes.")
    ] = False,
    eval_data: Annotated[
        str | None,
        typer.Option("--eval", help="Eval data for the metric (e.g. builtin:digits?split=test)."),
    ] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="Metric name.")] = None,
    exporter: Annotated[
        str | None,
        typer.Option("--exporter", help="ONNX exporter for torch models timed in onnxruntime."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow unpickling (runs code in the file).")
    ] = False,
    safe: SafeOpt = False,
    allow_import: AllowImportOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Less output.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Measure models side by side: params, MACs, size, peak memory, latency, metric."""
    with handle_errors(debug):
        from compressor.measure.bench import bench_paths
        from compressor.measure.tables import render_bench_table

        overrides = {
            "runtimes": runtime,
            "devices": device,
            "batch_sizes": batch,
            "seq_lengths": seq,
            "threads": threads,
            "warmup": warmup,
            "rounds": rounds,
            "iterations": iterations,
            "memory": False if no_memory else None,
        }
        log = (lambda _m: None) if quiet else (lambda m: console.print(f"[dim]{m}[/]"))
        from compressor.safe_import import allowed_imports

        with allowed_imports(allow_import):
            result = bench_paths(
                list(models),
                log=log,
                architecture=architecture,
                inputs=list(input_shape or []),
                bench=overrides,
                eval_source=eval_data,
                metric=metric,
                exporter=exporter,
                trust_pickle=trust_pickle,
                safe=safe,
            )
        console.print(render_bench_table(result))
        if json_out is not None:
            from compressor.files.atomic import write_json_atomic

            write_json_atomic(json_out, result)
            console.print(f"wrote {json_out}")
