"""The shipped MiniLM plan end to end, with every figure issue #7 asks for.

Runs ``sample_models/minilm/plan.yaml`` exactly as ``compress run`` does (prune 50% of heads
and FFN width, distil from the original on the training topics, prune the vocabulary, export,
bench), then measures what the run report does not:

* fidelity of the exported model (read with its rewritten tokenizer) to the original (read
  with its own): mean cosine and Spearman of pairwise similarities, on held-out pydoc topics
  (in-domain) and standard-library docstrings (out-of-domain);
* the same for the distilled model before vocabulary pruning (the run directory keeps it);
* from the report: safetensors size ratio, onnxruntime latency ratio (batch 32 x 128,
  interleaved), MACs and parameter ratios, and the distillation's wall time.

    python benchmarks/minilm_plan.py --out out/minilm

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.minilm_common import (
    OOD,
    PLAN,
    Stopwatch,
    embed,
    fidelity,
    machine_load,
    print_result,
)


def _dataset(layout, source: str, tokenize):
    from compressor.data.sources import load_source, parse_source

    return load_source(parse_source(source), layout, tokenizer=tokenize)


def measure_fidelity(model, original, original_tokenize, layout) -> dict:
    from compressor.formats.hf.tokenizer import model_tokenizer

    tokenize = model_tokenizer(model) or original_tokenize  # the rewritten one if any
    out = {}
    for name, source in (("heldout", "builtin:pydoc?split=heldout"), ("ood", OOD)):
        mine = embed(model, _dataset(layout, source, tokenize))
        ref = embed(original, _dataset(layout, source, original_tokenize))
        out[name] = fidelity(mine, ref)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/minilm"))
    parser.add_argument("--plan", type=Path, default=PLAN)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    from compressor import load
    from compressor.data.batches import InputLayout
    from compressor.formats.loading import load_model
    from compressor.plan.load import load_plan
    from compressor.run.runner import run_plan

    load_before = machine_load()
    clock = Stopwatch()
    result = run_plan(load_plan(args.plan, args.overrides), out_dir=args.out)
    run_seconds = clock.seconds()
    report = result.report
    plan = load_plan(args.plan, args.overrides).plan
    original = load_model(plan.model, args.plan.parent)
    layout = InputLayout.from_specs(original.input_specs)
    compressed = load(args.out / "model.safetensors")
    figures = {"exported": measure_fidelity(compressed, original.model, original.tokenizer, layout)}
    stages_dir = args.out / ".run" / "stages"
    distill_index = next(s["index"] for s in report["stages"] if s["name"] == "distill")
    for path in [stages_dir / f"{distill_index:02d}-distill" / "model.safetensors"]:
        distilled = load(path)
        figures["distilled"] = measure_fidelity(
            distilled, original.model, original.tokenizer, layout
        )
    ratios = report["ratios"]
    stages = {s["name"]: s for s in report["stages"]}
    distill = stages.get("distill", {})
    summary = {
        "exit_code": result.exit_code,
        "size_ratio": ratios.get("size"),
        "size_basis": ratios.get("size_basis"),
        "latency_ratio": ratios.get("latency"),
        "latency_basis": ratios.get("latency_basis"),
        "macs_ratio": ratios.get("macs"),
        "params_ratio": ratios.get("params"),
        "metric": report.get("metric"),
        "fidelity": figures,
        "distill_seconds": distill.get("seconds"),
        "distill_training": distill.get("training"),
        "vocab": stages.get("embeddings", {}).get("vocab"),
        "stage_metrics": {s["name"]: s.get("metric") for s in report["stages"]},
        "run_seconds": run_seconds,
        "load_before": load_before,
        "load_after": machine_load(),
        "bench_notes": (report.get("bench") or {}).get("notes"),
    }
    print_table(summary)
    print_result(summary)


def print_table(summary: dict) -> None:
    """The figures as a readable table (the RESULT line holds them all)."""

    def fmt(value, spec=".3f"):
        return "-" if value is None else format(value, spec)

    rows = [
        ("safetensors size vs original", fmt(summary["size_ratio"]) + "x"),
        (
            "onnxruntime latency, " + str(summary["latency_basis"]),
            fmt(summary["latency_ratio"]) + "x",
        ),
        ("MACs / parameters", f"{fmt(summary['macs_ratio'])}x / {fmt(summary['params_ratio'])}x"),
        ("distillation wall time", f"{fmt(summary['distill_seconds'], '.0f')} s"),
    ]
    for stage in ("distilled", "exported"):
        for domain in ("heldout", "ood"):
            f = summary["fidelity"].get(stage, {}).get(domain)
            if f:
                label = (
                    f"{stage}: {'held-out pydoc' if domain == 'heldout' else 'docstrings (OOD)'}"
                )
                rows.append((label, f"cosine {f['cosine']:.4f}  Spearman {f['spearman']:.4f}"))
    rows.append(("exit code (gates)", str(summary["exit_code"])))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
