"""From-scratch baseline for compressing the tiny Llama: train a Llama of a GIVEN smaller
shape on the tiny Llama's own training text for a GIVEN time budget, then measure held-out
perplexity. A compressed model is only worth its trouble if it beats this at the same shape
and the same (or less) time.

    python benchmarks/tiny_llama_scratch.py --hidden-size 96 --intermediate-size 256 \\
        --layers 4 --heads 6 --kv-heads 2 --budget 300     # 5 minutes, 2 threads

The tokenizer is the committed model's (``sample_models/tiny_llama/model``), so perplexities
compare directly with the teacher's, which the table shows next to the baseline's. The budget
is wall-clock seconds of training with ``--threads`` threads (tokenising and evaluation are
not counted); CPU seconds are reported too because on a shared machine the wall clock also
measures the neighbours. The learning-rate schedule follows the share of the budget spent.

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sample_models.tiny_llama import corpus
from sample_models.tiny_llama.train import MODEL_DIR, Recipe, Shape, build_model, train


def main(argv: list[str] | None = None) -> dict:
    default = Shape()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=default.hidden_size)
    parser.add_argument("--intermediate-size", type=int, default=default.intermediate_size)
    parser.add_argument("--layers", type=int, default=default.num_hidden_layers)
    parser.add_argument("--heads", type=int, default=default.num_attention_heads)
    parser.add_argument("--kv-heads", type=int, default=default.num_key_value_heads)
    parser.add_argument("--budget", type=float, required=True, help="training seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=Recipe.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", type=Path, default=MODEL_DIR, help="tokenizer + reference")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error("--budget must be positive (seconds of training)")
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shape = Shape(args.hidden_size, args.intermediate_size, args.layers, args.heads, args.kv_heads)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    recipe = Recipe(lr=args.lr, seed=args.seed)
    train_texts, held = corpus.train_texts(), corpus.heldout_texts()
    blocks = corpus.blocks(tokenizer, train_texts, recipe.block_size, tail=False)
    model = build_model(shape, vocab_size=len(tokenizer), seed=args.seed)
    stats = train(model, blocks, recipe, time_budget=args.budget, log_every=50)

    teacher = AutoModelForCausalLM.from_pretrained(args.teacher)
    rows = []
    for name, m in (("scratch", model), ("teacher", teacher)):
        rows.append(
            {
                "model": name,
                "params": sum(p.numel() for p in m.parameters()),
                "layers": m.config.num_hidden_layers,
                "hidden": m.config.hidden_size,
                "heldout_ppl": corpus.perplexity(m, tokenizer, held),
                "heldout_ppl_pydoc": corpus.perplexity(
                    m, tokenizer, corpus.heldout_texts(["pydoc"])
                ),
                "heldout_ppl_docstrings": corpus.perplexity(
                    m, tokenizer, corpus.heldout_texts(["docstrings"])
                ),
            }
        )
    print(
        f"\n{'model':8} {'params':>9} {'layers':>6} {'hidden':>6} {'held-out ppl':>12} "
        f"{'pydoc':>8} {'docstr':>8}"
    )
    for r in rows:
        print(
            f"{r['model']:8} {r['params']:>9} {r['layers']:>6} {r['hidden']:>6} "
            f"{r['heldout_ppl']:>12.2f} {r['heldout_ppl_pydoc']:>8.2f} "
            f"{r['heldout_ppl_docstrings']:>8.2f}"
        )
    print(
        f"scratch: {stats['steps']} steps x {recipe.batch_size * recipe.block_size} tokens in "
        f"{stats['seconds']:.0f}s wall / {stats['cpu_seconds']:.0f}s CPU ({args.threads} threads)"
    )
    result = {
        "shape": asdict(shape),
        "budget_s": args.budget,
        "threads": args.threads,
        "steps": stats["steps"],
        "tokens_seen": stats["steps"] * recipe.batch_size * recipe.block_size,
        "train_seconds": round(stats["seconds"], 1),
        "train_cpu_seconds": round(stats["cpu_seconds"], 1),
        "final_loss": stats["loss"],
        "scratch": rows[0],
        "teacher": rows[1],
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
