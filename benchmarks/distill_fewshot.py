"""Few-shot recovery of the pruned digits CNN: 10 labelled digits per class (100 images).

The CNN is pruned to at most 0.30x of its MACs (l2, global, round_to 8), then trained on the
same 100 labelled images for the same number of epochs either by fine-tuning alone (task
loss) or by distillation from the unpruned original (KD + task loss). The seed picks the
100 images and the data order. Metric: test accuracy of the final weights.

    python benchmarks/distill_fewshot.py             # 3 seeds, 20 epochs
    python benchmarks/distill_fewshot.py --seeds 0 --epochs 10

Ends with one line ``RESULT {json}`` holding every figure printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.distill_common import (
    SAMPLES,
    facts,
    make_context,
    mean_spread,
    print_result,
    run_stages,
)

PLAN = SAMPLES / "digits_cnn" / "plan.yaml"
PRUNE = {"target": {"macs": 0.3}, "criterion": "l2", "scope": "global", "round_to": 8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=20.0)
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)

    train = {
        "epochs": args.epochs,
        "lr": 2e-3,
        "few_shot": args.per_class,
        "batch_size": 32,
        "keep_best": False,
    }
    ctx, model = make_context(PLAN)
    original = ctx.evaluate(model)
    model, _ = run_stages(ctx, model, [("prune", PRUNE)])
    pruned = facts(ctx, model)
    print(
        f"digits CNN: original {original:.4f}; pruned {pruned['metric']:.4f} "
        f"(MACs {pruned['macs_ratio']:.3f}x); {args.per_class} labelled images per class"
    )
    results: dict = {
        "original": original,
        "pruned": pruned,
        "per_class": args.per_class,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "arms": {},
    }
    for name, stage in (("finetune", "finetune"), ("distill", "distill")):
        runs = []
        for seed in args.seeds:
            ctx, model = make_context(PLAN, seed=seed)
            model, reports = run_stages(ctx, model, [("prune", PRUNE), (stage, train)])
            runs.append(
                {
                    "seed": seed,
                    "metric": ctx.evaluate(model),
                    "examples": reports[-1].get("data", "train (few_shot)"),
                }
            )
            print(f"  {name:9s} seed {seed}: acc {runs[-1]['metric']:.4f}", flush=True)
        results["arms"][name] = {"accuracy": mean_spread([r["metric"] for r in runs]), "runs": runs}
    wins = sum(
        d["metric"] > f["metric"]
        for d, f in zip(
            results["arms"]["distill"]["runs"], results["arms"]["finetune"]["runs"], strict=True
        )
    )
    results["distill_wins"] = wins

    print()
    print(f"{'arm':10s} {'acc mean':>9s} {'std':>7s} {'min':>7s} {'max':>7s}")
    for name, arm in results["arms"].items():
        acc = arm["accuracy"]
        print(
            f"{name:10s} {acc['mean']:9.4f} {acc['std']:7.4f} {acc['min']:7.4f} {acc['max']:7.4f}"
        )
    print(f"distillation beats fine-tuning alone in {wins} of {len(args.seeds)} seeds")
    print_result(results)


if __name__ == "__main__":
    main()
