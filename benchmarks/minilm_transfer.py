"""Zero-shot transfer of the distilled MiniLM: fidelity in-domain (held-out pydoc topics, never
trained on) and out-of-domain (standard-library docstrings), with and without aligned weight
regularisation (the surviving units kept close to their pretrained values and directions).

Both arms run the shipped plan's prune and distill stages with the same seed and number of
steps; only ``distill.aligned`` differs. Fidelity: mean cosine to the original's sentence
embeddings and Spearman of the pairwise similarities.

    python benchmarks/minilm_transfer.py                    # aligned weight 1.0, plan's steps
    python benchmarks/minilm_transfer.py --weights 0.3 1 --max-steps 300

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.minilm_common import print_result
from benchmarks.minilm_distill import preset, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0])
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arms = {}
    for weight in [None, *args.weights]:
        stages = preset("plan")
        for name, options in stages:
            if name == "distill":
                if args.max_steps is not None:
                    options["max_steps"] = args.max_steps
                if weight is not None:
                    options["aligned"] = {"weight": weight}
        label = "plain" if weight is None else f"aligned-{weight:g}"
        arms[label] = run(stages, seed=args.seed)
        r = arms[label]
        print(
            f"{label:12s} in-domain cos {r['heldout']['cosine']:.4f} rho "
            f"{r['heldout']['spearman']:.4f} | out-of-domain cos {r['ood']['cosine']:.4f} rho "
            f"{r['ood']['spearman']:.4f} | {r['stage_seconds']} s",
            flush=True,
        )
    print_result({"arms": arms})


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
