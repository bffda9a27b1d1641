"""Accuracy of the sample digits CNN pruned to <= 0.30x its MACs and fine-tuned <= 5 epochs.

Drives the prune and finetune stages through the library (the shipped plan's model and data)
for several prune settings and seeds, and prints the held-out accuracy (450 test images)
after pruning, after the last fine-tuning epoch, and at the best epoch. The finetune stage
keeps its best epoch by default, and its evaluation set is the test split, so "best" is
selected on the test data; "final" (the last epoch, no selection) is the honest figure.

    python benchmarks/digits_cnn_prune_accuracy.py [--seeds 0 1 2] [--configs shipped ...]

Ends with one line ``RESULT {json}`` holding every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from compressor.counting import count_macs
from compressor.run.context import RunContext, context_for_plan
from compressor.stages import finetune, prune

PLAN = Path(__file__).resolve().parents[1] / "sample_models" / "digits_cnn" / "plan.yaml"

# Each config: prune options, then fine-tuning (epochs across the whole run, at most 5).
CONFIGS = {
    "shipped": (
        {"target": {"macs": 0.3}, "criterion": "l2", "scope": "global", "round_to": 8},
        {"epochs": 5, "lr": 2e-3},
    ),
    "global-l2/16": (
        {"target": {"macs": 0.3}, "criterion": "l2", "scope": "global", "round_to": 16},
        {"epochs": 5, "lr": 2e-3},
    ),
    "per-layer-l2/16": (
        {"target": {"macs": 0.3}, "criterion": "l2", "scope": "per-layer", "round_to": 16},
        {"epochs": 5, "lr": 2e-3},
    ),
    "global-taylor/16": (
        {"target": {"macs": 0.3}, "criterion": "taylor", "scope": "global", "round_to": 16},
        {"epochs": 5, "lr": 2e-3},
    ),
    "per-layer-bn/16": (
        {"target": {"macs": 0.3}, "criterion": "bn-scale", "scope": "per-layer", "round_to": 16},
        {"epochs": 5, "lr": 2e-3},
    ),
    "2-steps-l2/16": (
        {
            "target": {"macs": 0.3},
            "criterion": "l2",
            "scope": "per-layer",
            "round_to": 16,
            "steps": 2,
            "finetune_epochs": 1,
            "finetune_lr": 2e-3,
        },
        {"epochs": 4, "lr": 2e-3},
    ),
}


def context(seed: int) -> tuple[RunContext, torch.nn.Module]:
    return context_for_plan(PLAN, [f"seed={seed}"])


def run_one(name: str, seed: int) -> dict:
    prune_opts, tune_opts = CONFIGS[name]
    ctx, model = context(seed)
    x = ctx.example_inputs()
    original_acc, macs0 = ctx.evaluate(model), count_macs(model, x)
    start = time.perf_counter()
    ctx.stage_index, ctx.stage_name, ctx.stage_report = 0, "prune", {}
    model = prune.apply(model, prune.PruneConfig.model_validate(prune_opts), ctx)
    pruned_acc = ctx.evaluate(model)
    ctx.stage_index, ctx.stage_name, ctx.stage_report = 1, "finetune", {}
    tune = finetune.FinetuneConfig.model_validate(tune_opts)
    model = finetune.apply(model, tune, ctx)
    evals = [e["metric"] for e in ctx.stage_report["training"]["evals"]]
    epochs = tune.epochs + prune_opts.get("finetune_epochs", 0) * (prune_opts.get("steps", 1) - 1)
    return {
        "config": name,
        "seed": seed,
        "macs_ratio": round(count_macs(model, x) / macs0, 4),
        "finetune_epochs": epochs,
        "original": original_acc,
        "pruned": pruned_acc,
        "final": evals[-1],
        "best": max(evals),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    print(
        f"{'config':<17}{'seed':>5}{'MACs':>8}{'epochs':>7}{'pruned':>9}{'final':>8}"
        f"{'best':>8}{'change':>13}{'s':>6}"
    )
    for name in args.configs:
        for seed in args.seeds:
            r = run_one(name, seed)
            rows.append(r)
            change = (r["final"] - r["original"]) * 100
            print(
                f"{name:<17}{seed:>5}{r['macs_ratio']:>8.3f}{r['finetune_epochs']:>7g}"
                f"{r['pruned'] * 100:>8.2f}%{r['final'] * 100:>7.2f}%{r['best'] * 100:>7.2f}%"
                f"{change:>+12.2f}p{r['seconds']:>6.1f}",
                flush=True,
            )
    summary = {}
    for name in args.configs:
        mine = [r for r in rows if r["config"] == name]
        summary[name] = {
            "worst_final": min(r["final"] for r in mine),
            "mean_final": sum(r["final"] for r in mine) / len(mine),
            "max_drop_points": max((r["original"] - r["final"]) * 100 for r in mine),
            "max_macs_ratio": max(r["macs_ratio"] for r in mine),
        }
        verdict = "meets" if summary[name]["max_drop_points"] <= 0.3 else "misses"
        print(
            f"{name}: worst final {summary[name]['worst_final'] * 100:.2f}% "
            f"(largest loss {max(0.0, summary[name]['max_drop_points']):.2f} points): {verdict} "
            "the <= 0.3-point bar"
        )
    print(
        "RESULT " + json.dumps({"original": rows[0]["original"], "runs": rows, "summary": summary})
    )


if __name__ == "__main__":
    main()
