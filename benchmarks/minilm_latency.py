"""onnxruntime CPU latency of all-MiniLM-L6-v2 with 50% of heads and FFN width removed (hidden
size kept) against the original, at batch 32 x sequence 128, timed interleaved in one run.

Selection does not change latency, so the pruned model here is the prune stage's (L2) output
without training; ``--compressed out/minilm/model.onnx`` times a finished run's model instead.

    python benchmarks/minilm_latency.py                       # 2 threads, 7 rounds
    python benchmarks/minilm_latency.py --rounds 11 --threads 2

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.minilm_common import PLAN, machine_load, print_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--compressed", type=Path, default=None, help="a finished run's ONNX")
    args = parser.parse_args()
    from benchmarks.distill_common import make_context, run_stages
    from compressor.counting import count_macs, count_params
    from compressor.formats.onnx.export import export_onnx
    from compressor.measure.latency import Subject, measure
    from compressor.spec.sections import BenchSpec, OnnxSpec

    ctx, model = make_context(PLAN)
    example = {k: v[: args.batch] for k, v in ctx.example_inputs(args.batch).items()}
    original = ctx.original
    facts = {}
    if args.compressed is None:
        model, _ = run_stages(ctx, model, [("prune", {"heads": 0.5, "ffn": 0.5})])
        facts = {
            "params_ratio": round(count_params(model) / count_params(original), 4),
            "macs_ratio": round(count_macs(model, example) / count_macs(original, example), 4),
        }
    spec = BenchSpec(
        runtimes=["onnxruntime"],
        batch_sizes=[args.batch],
        seq_lengths=[args.seq],
        rounds=args.rounds,
        iterations=args.iterations,
        threads=args.threads,
        memory=False,
        budget_s=600,
    )
    onnx = OnnxSpec(exporter="legacy")  # the faster exporter; verified against torch either way
    load_before = machine_load()
    with tempfile.TemporaryDirectory() as tmp:
        subjects = []
        for name, m in (("original", original), ("pruned", model)):
            if name == "pruned" and args.compressed is not None:
                path = args.compressed
            else:
                path = Path(tmp) / f"{name}.onnx"
                export_onnx(m.eval(), example, path, onnx, specs=ctx.loaded.input_specs)
            subjects.append(Subject(name, "onnx", path, onnx_path=path))
        result = measure(subjects, spec, example)
    key = f"{args.batch}x{args.seq}"
    ms = {
        s.name: result["models"][s.name]["latency_ms"]["onnxruntime"]["cpu"][key] for s in subjects
    }
    ratio = ms["pruned"]["p50"] / ms["original"]["p50"]
    print(
        f"original p50 {ms['original']['p50']:.1f} ms, pruned p50 {ms['pruned']['p50']:.1f}"
        f" ms: {ratio:.3f}x at batch {key}, {args.threads} threads"
    )
    print_result(
        {
            "latency_ratio_p50": round(ratio, 4),
            "original_ms": ms["original"],
            "pruned_ms": ms["pruned"],
            **facts,
            "threads": args.threads,
            "load_before": load_before,
            "load_after": machine_load(),
            "notes": result["notes"],
        }
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
