"""Embedding-table compression of all-MiniLM-L6-v2 on its own (no head/FFN pruning, no
training): vocabulary pruning and low-rank factorisation, each reported separately in size and
in fidelity to the original.

* size: bytes of the token table and of the whole model.safetensors (compress's writer);
* fidelity: mean cosine to the original's sentence embeddings and Spearman of the pairwise
  similarities, on held-out pydoc topics (in-domain: the vocabulary comes from the training
  topics) and on standard-library docstrings (out-of-domain). The original reads each text
  with its own tokenizer, the compacted model with the rewritten one.

    python benchmarks/minilm_embeddings.py
    python benchmarks/minilm_embeddings.py --ranks 64 128 --refine-steps 300

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

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


def safetensors_bytes(ctx, model, before) -> int:
    from compressor.formats.compacted import save_compressed
    from compressor.formats.manifest import diff

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        return save_compressed(
            model, path, architecture=ctx.loaded.architecture, manifest=diff(before, model)
        ).size_bytes


def variant(options: dict) -> dict:
    """Apply one embeddings-stage config to a fresh original and measure it."""
    from benchmarks.distill_common import make_context, run_stages
    from compressor.formats.hf.model import input_embedding
    from compressor.formats.manifest import snapshot

    ctx, model = make_context(PLAN)
    teacher = ctx.original
    heldout_t, ood_t = ctx.data.dataset("eval"), text_dataset(ctx, OOD)
    ref = {"heldout": embed(teacher, heldout_t), "ood": embed(teacher, ood_t)}
    ctx.evaluate(teacher)  # the teacher's eval outputs, on its own tokens
    before = snapshot(model)
    row = {"config": options}
    if options:
        model, reports = run_stages(ctx, model, [("embeddings", options)])
        row["stage"] = {k: v for k, v in reports[0].items() if k in ("vocab", "factorize")}
    # After vocabulary pruning ctx tokenises with the rewritten tokenizer.
    heldout_s, ood_s = ctx.data.dataset("eval"), text_dataset(ctx, OOD)
    row["heldout"] = fidelity(embed(model, heldout_s), ref["heldout"])
    row["ood"] = fidelity(embed(model, ood_s), ref["ood"])
    row["table_bytes"] = sum(
        p.numel() * p.element_size() for p in input_embedding(model).parameters()
    )
    row["safetensors_bytes"] = safetensors_bytes(ctx, model, before)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--refine-steps", type=int, default=300)
    parser.add_argument("--keep-first", type=int, default=8000)
    args = parser.parse_args()
    load_before = machine_load()
    vocab = {"corpus": ["builtin:pydoc?split=train"]}
    wide = {**vocab, "keep_first": args.keep_first}
    rows = {
        "original": variant({}),
        "vocab": variant({"vocab": vocab}),
        f"vocab+first{args.keep_first}": variant({"vocab": wide}),
    }
    for rank in args.ranks:
        for steps in (0, args.refine_steps):
            factorize = {"rank": rank, "refine_steps": steps}
            rows[f"rank{rank}-refine{steps}"] = variant({"factorize": factorize})
    best = max(args.ranks)
    rows[f"vocab+first{args.keep_first}+rank{best}"] = variant(
        {"vocab": wide, "factorize": {"rank": best, "refine_steps": args.refine_steps}}
    )
    base = rows["original"]["safetensors_bytes"]
    for name, row in rows.items():
        row["size_ratio"] = round(row["safetensors_bytes"] / base, 4)
        print(
            f"{name:24s} table {row['table_bytes'] / 2**20:6.1f} MiB  file {row['size_ratio']:.3f}x"
            f"  held-out cos {row['heldout']['cosine']:.4f} rho {row['heldout']['spearman']:.4f}"
            f"  ood cos {row['ood']['cosine']:.4f} rho {row['ood']['spearman']:.4f}"
        )
    print_result({"rows": rows, "load_before": load_before, "load_after": machine_load()})


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
