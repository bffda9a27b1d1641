"""Distillation after pruning the sample text transformer (50% of heads and of FFN width).

The pruned model loses accuracy; each arm then trains it for the same number of epochs:

* finetune: the task loss on the labelled training paragraphs;
* distill (train): KD from the original + task loss on the same paragraphs;
* distill (unlabelled corpus): KD from the original on unlabelled text: the training
  paragraphs, the paragraphs of Python's other documentation topics, and random word windows
  of both. Every test paragraph, and anything within 0.5 word-set Jaccard of one, is left out.

"Recovered" is (after - pruned) / (original - pruned): the share of the lost accuracy won
back. The metric is the final epoch's (``keep_best: false``).

    python benchmarks/distill_text.py            # 3 seeds, 3 epochs
    python benchmarks/distill_text.py --seeds 0 --epochs 2

Ends with one line ``RESULT {json}`` holding every figure printed.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
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

PLAN = SAMPLES / "text_transformer" / "plan.yaml"
PRUNE = {"heads": 0.5, "ffn": 0.5, "criterion": "l2"}


def _words(text: str) -> set[str]:
    return set(text.lower().split())


def unlabelled_corpus(path: Path, seed: int = 0, windows: int = 2) -> int:
    """Write the unlabelled corpus (one text per line); returns its number of lines."""
    from pydoc_data.topics import topics

    from sample_models.text_transformer.data import paragraphs

    test = [_words(t) for t, _ in paragraphs()["test"]]
    rng = random.Random(seed)
    lines = []
    for text in topics.values():
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            words = para.split()
            if len(words) < 8:
                continue
            w = _words(para)
            if any(len(w & t) / len(w | t) > 0.5 for t in test):
                continue  # a test paragraph or a near copy of one: never train on it
            lines.append(para)
            for _ in range(windows):
                n = rng.randint(8, 40)
                if len(words) > n:
                    start = rng.randint(0, len(words) - n)
                    lines.append(" ".join(words[start : start + n]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    workdir = Path(tempfile.mkdtemp(prefix="distill_text_"))
    corpus = workdir / "corpus.txt"
    lines = unlabelled_corpus(corpus)
    ctx, model = make_context(PLAN)
    original = ctx.evaluate(model)
    model, _ = run_stages(ctx, model, [("prune", PRUNE)])
    pruned = facts(ctx, model)
    lost = original - pruned["metric"]
    print(
        f"text transformer: original {original:.4f}, pruned {pruned['metric']:.4f} "
        f"(MACs {pruned['macs_ratio']:.3f}x, params {pruned['params_ratio']:.3f}x); "
        f"unlabelled corpus: {lines} lines"
    )
    train = {"epochs": args.epochs, "lr": 1e-3, "keep_best": False}
    arms = {
        "finetune": ("finetune", train),
        "distill (train)": ("distill", train),
        "distill (unlabelled corpus)": ("distill", {**train, "data": str(corpus)}),
    }
    results: dict = {
        "original": original,
        "pruned": pruned,
        "corpus_lines": lines,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "arms": {},
    }
    for name, (stage, options) in arms.items():
        runs = []
        for seed in args.seeds:
            ctx, model = make_context(PLAN, seed=seed)
            model, reports = run_stages(ctx, model, [("prune", PRUNE), (stage, options)])
            metric = ctx.evaluate(model)
            recovered = (metric - pruned["metric"]) / lost if lost > 0 else float("nan")
            runs.append(
                {
                    "seed": seed,
                    "metric": metric,
                    "recovered": recovered,
                    "seconds": reports[-1]["seconds"],
                }
            )
            print(
                f"  {name:30s} seed {seed}: acc {metric:.4f}, recovered {recovered:.0%}", flush=True
            )
        results["arms"][name] = {
            "accuracy": mean_spread([r["metric"] for r in runs]),
            "recovered": mean_spread([r["recovered"] for r in runs]),
            "runs": runs,
        }

    print()
    print(
        f"{'arm':30s} {'acc mean':>9s} {'std':>7s} {'recovered mean':>15s} {'min':>6s} {'max':>6s}"
    )
    for name, arm in results["arms"].items():
        acc, rec = arm["accuracy"], arm["recovered"]
        print(
            f"{name:30s} {acc['mean']:9.4f} {acc['std']:7.4f} {rec['mean']:15.0%} "
            f"{rec['min']:6.0%} {rec['max']:6.0%}"
        )
    print_result(results)


if __name__ == "__main__":
    main()
