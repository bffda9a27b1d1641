"""Structural pruning of Hugging Face decoder LLMs with a known layout (no graph search).

    from compressor.graph.decoder import prune_decoder
    result = prune_decoder(model, heads=0.5, ffn=0.5, layers=2, hidden=0.25,
                           calib_batches=batches)          # in place
    result.edits    # what was removed, per unit and layer (provenance)
    result.report   # params before/after, widths, removed layers, stock_config, notes

Order: whole layers first (block influence, ShortGPT: ``1 - cos(block input, block
output)`` on the calibration batches, lowest removed; ``compressor.graph.depth``), then
one scoring pass for the widths (activation importance, Minitron; weight magnitude without
data) and the head, MLP and hidden edits (``compressor.graph.decoder.edits``).

Amounts are fractions removed (``heads=0.5`` removes half the heads); ``layers`` is a
count or a fraction of the blocks. ``gqa="groups"`` removes whole key/value groups (a KV
head with its query heads); ``gqa="within"`` keeps every group and removes the same number
of query heads from each. ``head_dim`` never changes (RoPE depends on it). With
``uniform=True`` every layer keeps the same widths, so a stock config describes the result
(``AutoModelForCausalLM.from_pretrained`` loads a ``save_pretrained`` folder of it); with
``uniform=False`` a global ranking gives layers different widths (the structure manifest
carries them). The config and every module attribute are updated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import StageError
from compressor.graph.decoder.edits import (
    attention_counts,
    edit_heads,
    edit_hidden,
    edit_mlp,
    mlp_width,
    sync_decoder_config,
)
from compressor.graph.decoder.importance import (
    DecoderScores,
    activation_scores,
    magnitude_scores,
    model_inputs,
)
from compressor.graph.decoder.layout import (
    DecoderLayout,
    causal_lm,
    find_decoder_layout,
    require_decoder_layout,
)
from compressor.graph.depth import BlockStack, block_influence, blocks_to_remove, drop_blocks

__all__ = ["DecoderPruning", "find_decoder_layout", "prune_decoder", "sync_decoder_config"]

CRITERIA = ("activation", "magnitude")


@dataclass
class DecoderPruning:
    edits: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def _fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise StageError(
            f"decoder pruning: '{name}' is the fraction removed, in [0, 1); got {value!r}"
        )
    return float(value)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _keep(total: int, fraction: float, round_to: int = 1, minimum: int = 1) -> int:
    keep = total - math.floor(fraction * total + 0.5)
    keep = max(minimum, keep // round_to * round_to) if round_to > 1 else keep
    return max(minimum, min(total, keep))


def _spread(scores: list[torch.Tensor], total_keep: int, minimum: int, step: int = 1) -> list[int]:
    """Per-layer keep counts from one global ranking (scores normalised by each layer's
    mean, so layers with larger activations do not win everything); each layer keeps at
    least ``minimum`` and a multiple of ``step`` units."""
    pool = []
    for layer, s in enumerate(scores):
        norm = s / s.mean().clamp_min(1e-12)
        pool += [(float(v), layer) for v in norm]
    pool.sort(reverse=True)
    counts = [0] * len(scores)
    for _, layer in pool[:total_keep]:
        counts[layer] += 1
    return [
        max(minimum, min(len(s), round(c / step) * step))
        for c, s in zip(counts, scores, strict=True)
    ]


def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.argsort(scores, descending=True, stable=True)[:k].tolist())


def _check(
    layout: DecoderLayout, lm: nn.Module, heads, ffn, layers, hidden, criterion, gqa, uniform
):
    for name, value in (("heads", heads), ("ffn", ffn), ("hidden", hidden)):
        _fraction(name, value)
    if criterion not in CRITERIA:
        raise StageError(f"decoder pruning: criterion {criterion!r}; use one of {CRITERIA}")
    if gqa not in ("groups", "within"):
        raise StageError(f"decoder pruning: gqa {gqa!r}; use 'groups' or 'within'")
    if isinstance(layers, bool) or not isinstance(layers, (int, float)) or layers < 0:
        raise StageError(f"decoder pruning: 'layers' is a count or a fraction, not {layers!r}")
    if isinstance(layers, float) and layers >= 1:
        raise StageError("decoder pruning: a fraction of layers must be below 1")
    if heads and not uniform and layout.heads_read_from_config:
        raise StageError(
            f"{type(lm).__name__} reads its head count from the shared config in forward, so "
            "every layer must keep the same number of heads",
            hint="use uniform widths (uniform=True) for heads",
        )
    if hidden and layout.arch == "opt" and lm.config.word_embed_proj_dim != lm.config.hidden_size:
        raise StageError(
            f"{type(lm).__name__} projects embeddings (word_embed_proj_dim != hidden_size); "
            "hidden-size pruning of that variant is not supported",
            hint="prune heads, ffn or layers only",
        )


def _prune_depth(lm, layout, count, batches, notes) -> tuple[list, dict]:
    layers = lm.get_submodule(layout.layers)
    if count >= len(layers):
        raise StageError(f"decoder pruning: cannot remove {count} of {len(layers)} layers")
    stack = BlockStack(layout.layers, layers)
    if not batches:
        notes.append("no calibration data: block influence measured on random token ids")
        generator = torch.Generator().manual_seed(0)
        vocab = lm.get_submodule(layout.embed).weight.shape[0]
        batches = [{"input_ids": torch.randint(0, vocab, (2, 32), generator=generator)}]
    scores = block_influence(
        lm, [stack], batches, run=lambda m, b: m(**model_inputs(b), use_cache=False)
    )
    names = stack.block_names()
    order = sorted(range(len(names)), key=lambda i: (scores.get(names[i], math.inf), i))
    removed = sorted(order[:count])
    records = drop_blocks(lm, {layout.layers: removed})
    info = {
        "removed": removed,
        "influence": [round(scores.get(n, math.inf), 6) for n in names],
    }
    return [{"unit": "layers", **r} for r in records], info


def _head_plan(
    scores: DecoderScores, lm, layout, fraction, gqa, uniform
) -> list[tuple[list[int], list[int]]]:
    """Per layer: (query heads kept, key/value heads kept)."""
    blocks = list(lm.get_submodule(layout.layers))
    counts = [attention_counts(b, layout)[:2] for b in blocks]
    plans = []
    if gqa == "groups" or all(nh == nkv for nh, nkv in counts):
        group_scores = [
            s.reshape(nkv, nh // nkv).sum(1)
            for s, (nh, nkv) in zip(scores.heads, counts, strict=True)
        ]
        if uniform:
            keeps = [_keep(nkv, fraction) for _, nkv in counts]
        else:
            total = sum(_keep(nkv, fraction) for _, nkv in counts)
            keeps = _spread(group_scores, total, 1)
        for (nh, nkv), gs, k in zip(counts, group_scores, keeps, strict=True):
            r = nh // nkv
            kv = _top(gs, k)
            plans.append(([g * r + j for g in kv for j in range(r)], kv))
        return plans
    if uniform:
        keeps = [_keep(nh // nkv, fraction) * nkv for nh, nkv in counts]
    else:
        total = sum(_keep(nh // nkv, fraction) * nkv for nh, nkv in counts)
        keeps = [
            max(nkv, k)
            for k, (nh, nkv) in zip(
                _spread(scores.heads, total, 1, counts[0][1]), counts, strict=True
            )
        ]
    for (nh, nkv), s, k in zip(counts, scores.heads, keeps, strict=True):
        r, per = nh // nkv, k // nkv
        grouped = s.reshape(nkv, r)
        q = [g * r + j for g in range(nkv) for j in _top(grouped[g], per)]
        plans.append((q, list(range(nkv))))
    return plans


def prune_decoder(
    model: nn.Module,
    *,
    heads: float = 0.0,
    ffn: float = 0.0,
    layers: int | float = 0,
    hidden: float = 0.0,
    criterion: str = "activation",
    calib_batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    gqa: str = "groups",
    uniform: bool = True,
    round_to: int = 1,
) -> DecoderPruning:
    """Prune a decoder LLM in place through its known layout.

    Args:
        model: a supported ``*ForCausalLM`` (or an ``HFModel`` wrapping one).
        heads: fraction of key/value groups (``gqa="groups"``) or of the query heads in
            every group (``gqa="within"``) removed.
        ffn: fraction of the MLP width removed.
        layers: whole decoder layers removed: a count, or a fraction of them.
        hidden: fraction of the hidden size (residual stream, embeddings) removed.
        criterion: ``activation`` (forward passes on ``calib_batches``; falls back on
            ``magnitude`` without them, with a note) or ``magnitude``.
        calib_batches: dicts with ``input_ids`` (and ``attention_mask``); read twice when
            layers are removed, so pass a list, not a one-shot iterator.
        uniform: every layer keeps the same widths (a stock config); else per-layer widths.
        round_to: keep MLP and hidden widths multiples of this (8 or 64 for fast kernels).

    Returns:
        :class:`DecoderPruning` with the edit records and a report.

    Raises:
        StageError: an unsupported architecture or impossible amounts, before any edit.
    """
    layout = require_decoder_layout(model)
    lm = causal_lm(model)
    _check(layout, lm, heads, ffn, layers, hidden, criterion, gqa, uniform)
    batches = list(calib_batches) if calib_batches is not None else []
    notes: list[str] = []
    result = DecoderPruning()
    before = _params(lm)
    n_layers = len(lm.get_submodule(layout.layers))
    count = blocks_to_remove(layers, n_layers) if layers else 0
    if count:
        records, info = _prune_depth(lm, layout, count, batches, notes)
        result.edits += records
        result.report["layers"] = info
    if heads or ffn or hidden:
        if criterion == "activation" and not batches:
            notes.append("no calibration data: widths ranked by weight magnitude")
            criterion = "magnitude"
        if criterion == "activation":
            scores, used = activation_scores(lm, layout, batches)
            result.report["calibration_batches"] = used
        else:
            scores = magnitude_scores(lm, layout)
        blocks = list(lm.get_submodule(layout.layers))
        if heads:
            for i, (q, kv) in enumerate(_head_plan(scores, lm, layout, heads, gqa, uniform)):
                edit_heads(blocks[i], layout, q, kv)
                result.edits.append({"unit": "heads", "layer": i, "query": q, "kv": kv})
        if ffn:
            widths = [mlp_width(b, layout) for b in blocks]
            if uniform:
                keeps = [_keep(w, ffn, round_to) for w in widths]
            else:
                total = sum(_keep(w, ffn) for w in widths)
                keeps = _spread(scores.ffn, total, round_to, round_to)
            for i, (block, k) in enumerate(zip(blocks, keeps, strict=True)):
                kept = _top(scores.ffn[i], k)
                edit_mlp(block, layout, kept)
                result.edits.append({"unit": "ffn", "layer": i, "kept": kept})
        if hidden:
            kept = _top(scores.hidden, _hidden_keep(lm, layout, hidden, round_to))
            edit_hidden(lm, layout, kept)
            result.edits.append({"unit": "hidden", "kept": kept})
    sync_decoder_config(lm)
    after = _params(lm)
    blocks = list(lm.get_submodule(layout.layers))
    counts = [attention_counts(b, layout) for b in blocks]
    result.report.update(
        {
            "architecture": layout.arch,
            "criterion": criterion,
            "params": {"before": before, "after": after, "ratio": round(after / before, 4)},
            "widths": [
                {"heads": nh, "kv_heads": nkv, "head_dim": hd, "ffn": mlp_width(b, layout)}
                for b, (nh, nkv, hd) in zip(blocks, counts, strict=True)
            ],
            "hidden": lm.get_submodule(layout.embed).weight.shape[1],
            "stock_config": is_stock_config(lm, layout),
            "notes": notes,
        }
    )
    return result


def _hidden_keep(lm: nn.Module, layout: DecoderLayout, fraction: float, round_to: int) -> int:
    size = lm.get_submodule(layout.embed).weight.shape[1]
    keep = _keep(size, fraction, round_to)
    if not layout.head_dim_from_hidden:
        return keep
    # These configs compute head_dim = hidden / heads: the width must divide by the head
    # count the config will state (the pruned heads when heads * head_dim == width).
    nh, _, hd = attention_counts(lm.get_submodule(layout.layers)[0], layout)
    if keep == nh * hd:
        return keep
    cfg_heads = getattr(lm.config, layout.heads_key)
    return max(cfg_heads, keep // cfg_heads * cfg_heads)


def is_stock_config(lm: nn.Module, layout: DecoderLayout) -> bool:
    """Whether the config alone describes every width (so plain transformers rebuilds it)."""
    config = lm.config
    blocks = list(lm.get_submodule(layout.layers))
    counts = {attention_counts(b, layout) for b in blocks}
    widths = {mlp_width(b, layout) for b in blocks}
    if len(counts) != 1 or len(widths) != 1:
        return False
    (nh, nkv, hd), (ffn,) = next(iter(counts)), widths
    if getattr(config, layout.heads_key) != nh or getattr(config, layout.ffn_key) != ffn:
        return False
    if layout.kv_key and getattr(config, layout.kv_key) != nkv:
        return False
    hidden = getattr(config, layout.hidden_key)
    return nh * hd == hidden if layout.head_dim_from_hidden else True
