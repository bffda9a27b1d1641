"""Original-vs-compressed latency ratio of the sample CNN and text transformer, measured two
ways so that `compress bench` can be checked against an independent loop.

For each sample: run its plan's prune stage (no fine-tuning: latency does not depend on the
weights' values) through `compress run --no-bench`, then time the original and the compacted
model

* with a plain loop written here (blocks of calls, A then B, alternating which goes first;
  median of each), and
* with `compress bench` (compressor.measure.bench.bench_paths: interleaved rounds, p50),

in onnxruntime and torch eager at the plan's batch sizes, with the same thread count.
Prints a table and ends with one line `RESULT {json}`. The two ratios should agree within the
machine's noise; the spread between repeated runs of this script shows how large that is.

Run from the repository root:  .venv/bin/python benchmarks/bench_latency_ratio.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import yaml

from compressor.formats.onnx.export import export_onnx
from compressor.formats.onnx.session import OnnxModel
from compressor.formats.reload import load
from compressor.forward import resize_batch
from compressor.measure.bench import bench_paths
from compressor.measure.latency import physical_cores
from compressor.plan.load import load_plan
from compressor.run.runner import run_plan
from compressor.spec.sections import OnnxSpec

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = {"digits_cnn": [1, 64], "text_transformer": [1, 32]}


def compact(sample: str, out: Path) -> Path:
    """Run only the plan's prune stage (and export) into ``out``; returns the plan path."""
    plan_path = ROOT / "sample_models" / sample / "plan.yaml"
    prune = yaml.safe_load(plan_path.read_text())["stages"][0]
    flow = yaml.safe_dump([prune], default_flow_style=True).strip()
    loaded = load_plan(plan_path, [f"stages={flow}"])
    run_plan(loaded, out_dir=out, quiet=True, skip_bench=True)
    return plan_path


def plain_loop(fa, fb, calls: int, rounds: int = 6, warmup: int = 5) -> tuple[float, float]:
    """Median ms of ``fa`` and ``fb``: blocks of ``calls`` calls, A then B, B then A, ... —
    the method `compress bench` uses (a server runs one model repeatedly, caches warm),
    written out independently here."""
    for _ in range(warmup):
        fa(), fb()
    ta: list[float] = []
    tb: list[float] = []
    for r in range(rounds):
        order = ((fa, ta), (fb, tb)) if r % 2 == 0 else ((fb, tb), (fa, ta))
        for f, times in order:
            f()  # not timed: the other model's threads settle
            for _ in range(calls):
                t0 = time.perf_counter()
                f()
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ta), statistics.median(tb)


def independent(
    sample: str,
    plan_path: Path,
    out: Path,
    batches: list[int],
    threads: int,
    calls: int,
    rounds: int,
) -> dict[str, dict[str, float]]:
    """The ratio from the plain loop, per runtime and batch size."""
    from compressor.formats.loading import example_inputs, load_model

    loaded_plan = load_plan(plan_path)
    original = load_model(loaded_plan.plan.model, loaded_plan.base_dir).model.eval()
    compacted = load(out / "model.safetensors")
    example = example_inputs(loaded_plan.plan.model.inputs, batch_size=max(batches))
    original_onnx = out / "original_for_bench.onnx"
    export_onnx(original, example, original_onnx, OnnxSpec(), specs=loaded_plan.plan.model.inputs)
    sessions = [
        OnnxModel(original_onnx, threads=threads),
        OnnxModel(out / "model.onnx", threads=threads),
    ]
    torch.set_num_threads(threads)
    result: dict[str, dict[str, float]] = {"onnxruntime": {}, "torch": {}}
    for batch in batches:
        x = resize_batch(example, batch)
        a, b = plain_loop(partial(sessions[0].run, x), partial(sessions[1].run, x), calls, rounds)
        result["onnxruntime"][str(batch)] = round(b / a, 3)
        with torch.inference_mode():
            a, b = plain_loop(partial(original, **x), partial(compacted, **x), calls, rounds)
        result["torch"][str(batch)] = round(b / a, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (noisier)")
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    args = parser.parse_args()
    threads = args.threads or physical_cores()
    rounds, iterations = (3, 5) if args.quick else (6, 10)
    results = {}
    for sample, batches in SAMPLES.items():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            plan_path = compact(sample, out)
            plain = independent(sample, plan_path, out, batches, threads, iterations, rounds)
            bench = bench_paths(
                [plan_path, out / "model.safetensors"],
                bench={
                    "batch_sizes": batches,
                    "threads": threads,
                    "rounds": rounds,
                    "iterations": iterations,
                    "memory": False,
                },
            )
        ratio = bench["ratios"][0]
        results[sample] = {
            "params_ratio": ratio["params"],
            "macs_ratio": ratio["macs"],
            "threads": threads,
            "latency_ratio": {
                runtime: {
                    str(b): {
                        "plain_loop": plain[runtime][str(b)],
                        "compress_bench": ratio["latency_by"].get(f"{runtime}/cpu/{b}"),
                    }
                    for b in batches
                }
                for runtime in ("onnxruntime", "torch")
            },
        }
    print(f"{'sample':18} {'runtime':12} {'batch':>5} {'plain loop':>11} {'compress bench':>15}")
    for sample, r in results.items():
        for runtime, per_batch in r["latency_ratio"].items():
            for batch, pair in per_batch.items():
                print(
                    f"{sample:18} {runtime:12} {batch:>5} {pair['plain_loop']:>10.3f}x "
                    f"{pair['compress_bench']:>14.3f}x"
                )
        print(
            f"{sample:18} params {r['params_ratio']:.3f}x, MACs {r['macs_ratio']:.3f}x, "
            f"{r['threads']} threads"
        )
    import os

    results["load_average"] = round(os.getloadavg()[0], 2)
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
