"""MiniLM-L6 with 50% of heads and FFN width removed, distilled from the original on pydoc text.

Runs a preset's stages through the library (as ``compress run`` does, without export), then
measures fidelity to the original on held-out pydoc topics (in-domain, never trained on) and
on standard-library docstrings (out-of-domain): mean cosine of the sentence embeddings and the
Spearman correlation of the pairwise-similarity matrices. Presets differ in one thing each, so
they compare at an equal number of steps (fair on a busy machine too):

* ``plan`` (= ``self``): the shipped plan's self-distilled pruning (the distill stage's
  ``prune:`` block: Taylor importance from the distillation gradients, cubic schedule over
  the first 30% of the steps; ``--max-steps`` overrides);
* ``l2`` / ``activation``: one-shot pruning by that criterion, then the plan's distillation;
* ``kd``: one-shot L2 pruning, then distillation without hidden-state matching.

    python benchmarks/minilm_distill.py --preset plan
    python benchmarks/minilm_distill.py --preset activation --max-steps 150 --aligned 0.1
    python benchmarks/minilm_distill.py --max-steps 600 --without augment dropout

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.minilm_common import (
    OOD,
    PLAN,
    embed,
    fidelity,
    machine_load,
    print_result,
    text_dataset,
)


def plan_stages() -> list[tuple[str, dict[str, Any]]]:
    """The shipped plan's stages before vocabulary pruning, as ``(name, options)``."""
    from compressor.plan.load import load_plan

    plan = load_plan(PLAN).plan
    stages = []
    for name, cfg in plan.stage_list():
        if name == "embeddings":
            break
        stages.append((name, cfg.model_dump(mode="json", exclude_unset=True)))
    return stages


def preset(name: str) -> list[tuple[str, dict[str, Any]]]:
    stages = plan_stages()
    distill = next(o for n, o in stages if n == "distill")
    block = distill.get("prune") or {"heads": 0.5, "ffn": 0.5}
    widths = {"heads": block.get("heads"), "ffn": block.get("ffn")}
    plain = {k: v for k, v in distill.items() if k != "prune"}  # distillation alone
    if name in ("plan", "self"):  # the shipped plan prunes while it distils
        return stages
    if name in ("l2", "activation"):
        return [("prune", {**widths, "criterion": name}), ("distill", plain)]
    if name == "kd":
        no_hidden = {k: v for k, v in plain.items() if k != "hidden"}
        return [("prune", {**widths, "criterion": "l2"}), ("distill", no_hidden)]
    raise SystemExit(f"unknown preset {name!r}")


def run(stages, *, seed: int = 0, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run ``stages`` on a fresh original and measure fidelity (see the module docstring)."""
    from benchmarks.distill_common import make_context, run_stages

    load_before = machine_load()
    ctx, model = make_context(PLAN, seed=seed, overrides=overrides)
    t0 = time.perf_counter()
    model, reports = run_stages(ctx, model, copy.deepcopy(stages))
    seconds = time.perf_counter() - t0
    teacher = ctx.original
    heldout, ood = ctx.data.dataset("eval"), text_dataset(ctx, OOD)
    training = [r.get("training", {}) for r in reports]
    return {
        "stages": stages,
        "seconds": round(seconds, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "heldout": fidelity(embed(model, heldout), embed(teacher, heldout)),
        "ood": fidelity(embed(model, ood), embed(teacher, ood)),
        "load_before": load_before,
        "load_after": machine_load(),
        "stage_seconds": [r["seconds"] for r in reports],
        "train_seconds": [t.get("seconds") for t in training],
        "steps": [t.get("steps") for t in training],
        "evals": [t.get("evals") for t in training],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="plan")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--aligned", type=float, default=None, help="aligned weight")
    parser.add_argument("--train", default=None, help="distillation data source")
    parser.add_argument("--no-hidden", action="store_true", help="no hidden-state matching")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=JSON",
        help="set a distill option, e.g. dropout=0.1 'augment={\"copies\": 2}'",
    )
    parser.add_argument(
        "--without", nargs="*", default=[], metavar="KEY", help="drop distill options"
    )
    args = parser.parse_args()
    stages = preset(args.preset)
    for name, options in stages:
        if name != "distill":
            continue
        if args.max_steps is not None:
            options["max_steps"] = args.max_steps
        if args.lr is not None:
            options["lr"] = args.lr
        if args.aligned is not None:
            options["aligned"] = {"weight": args.aligned}
        if args.train is not None:
            options["data"] = args.train
        if args.no_hidden:
            options.pop("hidden", None)
        for key in args.without:
            options.pop(key, None)
        for item in args.set:
            key, _, value = item.partition("=")
            options[key] = json.loads(value)

    print_result({"preset": args.preset, **run(stages, seed=args.seed)})


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
