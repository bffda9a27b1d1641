"""merge-neurons vs l2 pruning at the same removed width, with no fine-tuning at all.

On the sample digits MLP and CNN (450 held-out test images), each hidden group loses 25%,
50% and 75% of its units, either dropped by the prune stage (criterion l2, per layer) or
merged by the share stage. Variants of the merge:

* ``merge``: the defaults (by weights, similarity l2, recalibrate auto: the plans have
  training data, so batch-norm statistics fed by merged layers are re-estimated on 8
  calibration batches; no weight is trained);
* ``merge-data-free``: ``recalibrate: false``, no data used at all;
* ``merge-act``: ``by: activations`` (units matched by their activations on calibration data);
* ``prune-l2+bn``: the pruned model with every batch norm re-estimated on the same batches,
  so the merge's use of data is not what makes the difference (the MLP has no batch norm).

    python benchmarks/share_merge.py [--models digits_mlp digits_cnn] [--widths 0.25 0.5 0.75]

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from benchmarks.share_common import (
    calibration_batches,
    context,
    run_batch,
    run_prune,
    run_share,
)
from compressor.counting import count_params
from compressor.stages.share.units import recalibrate_norms

VARIANTS = {
    "merge": {},
    "merge-data-free": {"recalibrate": False},
    "merge-act": {"by": "activations"},
}


def measure(name: str, widths: list[float]) -> list[dict]:
    ctx, model = context(name)
    original = ctx.evaluate(model)
    batches = calibration_batches(ctx)
    rows = []
    for width in widths:
        row = {"model": name, "removed": width, "original": original}
        pruned = copy.deepcopy(model)
        run_prune(ctx, pruned, amount=width, criterion="l2")
        row["prune-l2"] = ctx.evaluate(pruned)
        row["params"] = count_params(pruned)
        norms = [m for m in pruned.modules() if isinstance(m, _BatchNorm)]
        if norms:
            recalibrate_norms(norms, pruned, batches, run_batch)
        row["prune-l2+bn"] = ctx.evaluate(pruned)
        for variant, options in VARIANTS.items():
            merged = copy.deepcopy(model)
            start = time.perf_counter()
            run_share(ctx, merged, method="merge-neurons", amount=width, **options)
            row[f"{variant}_seconds"] = round(time.perf_counter() - start, 2)
            assert count_params(merged) == row["params"], "merge and prune must match widths"
            row[variant] = ctx.evaluate(merged)
        rows.append(row)
        print(
            f"{name:<11}{width:>8.0%}{row['params']:>9,}{original * 100:>9.2f}"
            + "".join(f"{row[k] * 100:>10.2f}" for k in COLUMNS),
            flush=True,
        )
    return rows


COLUMNS = ["prune-l2", "merge", "merge-data-free", "merge-act", "prune-l2+bn"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits_mlp", "digits_cnn"])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("accuracy (%) on the test split, no fine-tuning; 'removed' = units per group")
    print(
        f"{'model':<11}{'removed':>8}{'params':>9}{'original':>9}"
        + "".join(
            f"{c[:10]:>10}" for c in ["prune-l2", "merge", "data-free", "merge-act", "prune+bn"]
        )
    )
    rows = [r for name in args.models for r in measure(name, args.widths)]
    wins = {f"{r['model']}@{r['removed']}": r["merge"] > r["prune-l2"] for r in rows}
    print(f"merge (defaults) beats prune-l2 at {sum(wins.values())}/{len(wins)} settings")
    print("RESULT " + json.dumps({"rows": rows, "merge_beats_prune_l2": wins}))


if __name__ == "__main__":
    main()
