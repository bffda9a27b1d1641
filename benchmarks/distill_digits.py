"""Prune-then-finetune vs prune-then-distill vs self-distilled pruning on the digits CNN.

Every arm ends at the same MAC target (at most 0.30x of the original) after the same number
of training epochs, from the same checkpoint; the seed changes the data order (and the plan
seed). The metric is the test accuracy of the final weights (``keep_best: false``, so no arm
picks its best epoch on the test set). A fourth arm ranks units by the prune block's l2
criterion instead of the distillation gradients, to show what that choice is worth.

    python benchmarks/distill_digits.py                # 3 seeds, 1 and 3 epochs
    python benchmarks/distill_digits.py --seeds 0 --epochs 1

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


def arms(epochs: float) -> dict[str, list[tuple[str, dict]]]:
    train = {"epochs": epochs, "lr": 2e-3, "keep_best": False}
    return {
        "prune -> finetune": [("prune", PRUNE), ("finetune", train)],
        "prune -> distill": [("prune", PRUNE), ("distill", train)],
        "self-distilled pruning": [("distill", {**train, "prune": {**PRUNE, "steps": 10}})],
        "self-distilled (l2 importance)": [
            ("distill", {**train, "prune": {**PRUNE, "steps": 10, "importance": "criterion"}})
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, nargs="+", default=[1.0, 3.0])
    args = parser.parse_args()
    torch.set_num_threads(2)

    ctx, model = make_context(PLAN)
    original = ctx.evaluate(model)
    print(f"digits CNN: original accuracy {original:.4f} (450 test images)")
    results: dict = {"original_accuracy": original, "seeds": args.seeds, "arms": {}}
    for epochs in args.epochs:
        for name, stages in arms(epochs).items():
            runs = []
            for seed in args.seeds:
                ctx, model = make_context(PLAN, seed=seed)
                model, reports = run_stages(ctx, model, stages)
                runs.append(
                    {
                        "seed": seed,
                        **facts(ctx, model),
                        "seconds": sum(r["seconds"] for r in reports),
                    }
                )
                print(
                    f"  {epochs:g} ep  {name:32s} seed {seed}: acc {runs[-1]['metric']:.4f}  "
                    f"MACs {runs[-1]['macs_ratio']:.3f}x  params {runs[-1]['params_ratio']:.3f}x",
                    flush=True,
                )
            key = f"{name} @ {epochs:g} epochs"
            results["arms"][key] = {
                "epochs": epochs,
                "accuracy": mean_spread([r["metric"] for r in runs]),
                "macs_ratio_max": max(r["macs_ratio"] for r in runs),
                "params_ratio_mean": sum(r["params_ratio"] for r in runs) / len(runs),
                "runs": runs,
            }

    print()
    print(f"{'arm':46s} {'acc mean':>9s} {'std':>7s} {'min':>7s} {'max':>7s} {'MACs':>6s}")
    for key, arm in results["arms"].items():
        acc = arm["accuracy"]
        print(
            f"{key:46s} {acc['mean']:9.4f} {acc['std']:7.4f} {acc['min']:7.4f} "
            f"{acc['max']:7.4f} {arm['macs_ratio_max']:5.3f}x"
        )
    for epochs in args.epochs:
        sdp = results["arms"][f"self-distilled pruning @ {epochs:g} epochs"]["accuracy"]["mean"]
        ptf = results["arms"][f"prune -> finetune @ {epochs:g} epochs"]["accuracy"]["mean"]
        verdict = "at least as good as" if sdp >= ptf else "WORSE than"
        print(
            f"{epochs:g} epochs: self-distilled pruning ({sdp:.4f}) is {verdict} "
            f"prune -> finetune ({ptf:.4f})"
        )
        results[f"sdp_minus_prune_finetune@{epochs:g}"] = sdp - ptf
    print_result(results)


if __name__ == "__main__":
    main()
