"""Importance of a decoder's heads, MLP channels and hidden channels.

* :func:`activation_scores` (Minitron, Muralidharan et al. 2024): forward passes only. For
  every channel, the mean ``|activation|`` over a sequence's real tokens, aggregated over the
  calibration samples by the L2 norm. Heads: the attention output entering the output
  projection (a head's score is the L2 norm of its head_dim channels). MLP: the input of the
  down projection. Hidden: the outputs of every norm of the residual stream, summed.
* :func:`magnitude_scores`: no data; the squared L2 norm of the weights each unit owns.

Scores come back per layer (``heads[i]``: one score per query head of layer ``i``;
``ffn[i]``: one per MLP channel) plus one vector for the hidden size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from compressor.graph.decoder.edits import attention_counts
from compressor.graph.decoder.layout import DecoderLayout
from compressor.graph.layers import is_transposed_linear

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


@dataclass
class DecoderScores:
    heads: list[torch.Tensor]  # per layer: (query heads,)
    ffn: list[torch.Tensor]  # per layer: (MLP width,)
    hidden: torch.Tensor  # (hidden size,)


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a calibration batch a causal LM's forward takes."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS and isinstance(v, torch.Tensor)}


def run_batches(lm: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], before=None) -> int:
    """Forward every batch (eval mode, no grad, no cache); returns how many ran."""
    was_training = lm.training
    lm.eval()
    count = 0
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = model_inputs(batch)
                if before is not None:
                    before(inputs)
                lm(**inputs, use_cache=False)
                count += 1
    finally:
        lm.train(was_training)
    return count


class _ChannelStat:
    """sqrt(sum over samples of (mean |x| over the sample's real tokens)^2), per channel."""

    def __init__(self):
        self.sq: torch.Tensor | None = None

    def add(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        x = x.detach().float().abs()
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if mask is not None and mask.shape == x.shape[:2]:
            m = mask.to(x.dtype).unsqueeze(-1)
            mean = (x * m).sum(1) / m.sum(1).clamp_min(1)
        else:
            mean = x.mean(1)
        sq = (mean**2).sum(0)
        self.sq = sq if self.sq is None else self.sq + sq

    def value(self, size: int) -> torch.Tensor:
        return torch.zeros(size) if self.sq is None else self.sq.sqrt().cpu()


def activation_scores(
    lm: nn.Module, layout: DecoderLayout, batches: Iterable[Mapping[str, torch.Tensor]]
) -> tuple[DecoderScores, int]:
    """Activation importance on calibration batches; returns the scores and the batch count."""
    layers = lm.get_submodule(layout.layers)
    state: dict[str, torch.Tensor | None] = {"mask": None}
    heads = [_ChannelStat() for _ in layers]
    ffn = [_ChannelStat() for _ in layers]
    hidden = _ChannelStat()
    hooks = []

    def pre_hook(stat: _ChannelStat):
        def hook(_module, args):
            stat.add(args[0], state["mask"])

        return hook

    def out_hook(_module, _args, output):
        hidden.add(output[0] if isinstance(output, tuple) else output, state["mask"])

    for i, block in enumerate(layers):
        attn = block.get_submodule(layout.attn)
        hooks.append(attn.get_submodule(layout.o).register_forward_pre_hook(pre_hook(heads[i])))
        down = block.get_submodule(layout.mlp_out)
        hooks.append(down.register_forward_pre_hook(pre_hook(ffn[i])))
        for path in layout.block_norms:
            hooks.append(block.get_submodule(path).register_forward_hook(out_hook))
    if layout.final_norm:
        hooks.append(lm.get_submodule(layout.final_norm).register_forward_hook(out_hook))

    def before(inputs: dict[str, torch.Tensor]) -> None:
        state["mask"] = inputs.get("attention_mask")

    try:
        count = run_batches(lm, batches, before)
    finally:
        for h in hooks:
            h.remove()
    head_scores, ffn_scores = [], []
    for i, block in enumerate(layers):
        nh, _, hd = attention_counts(block, layout)
        channels = heads[i].value(nh * hd)
        head_scores.append(channels.reshape(nh, hd).norm(dim=1))
        width = block.get_submodule(layout.mlp_out)
        size = width.weight.shape[0] if is_transposed_linear(width) else width.weight.shape[1]
        ffn_scores.append(ffn[i].value(size))
    size = lm.get_submodule(layout.embed).weight.shape[1]
    return DecoderScores(head_scores, ffn_scores, hidden.value(size)), count


def _out_sq(module: nn.Module) -> torch.Tensor:
    """Squared L2 norm of each output feature's weights."""
    w = module.weight.detach().float()
    return (w**2).sum(0) if is_transposed_linear(module) else (w**2).sum(1)


def _in_sq(module: nn.Module) -> torch.Tensor:
    w = module.weight.detach().float()
    return (w**2).sum(1) if is_transposed_linear(module) else (w**2).sum(0)


@torch.no_grad()
def magnitude_scores(lm: nn.Module, layout: DecoderLayout) -> DecoderScores:
    """Weight-magnitude importance (no data): each unit's squared weight norm."""
    head_scores, ffn_scores = [], []
    hidden = lm.get_submodule(layout.embed).weight.detach().float().pow(2).sum(0)
    for block in lm.get_submodule(layout.layers):
        attn = block.get_submodule(layout.attn)
        nh, _, hd = attention_counts(block, layout)
        o = attn.get_submodule(layout.o)
        per_head = _in_sq(o).reshape(nh, hd).sum(1)
        q_out = _out_sq(attn.get_submodule(layout.q))
        if layout.qkv_kind == "interleaved":
            per_head = per_head + q_out.reshape(nh, 3 * hd).sum(1)
        else:
            per_head = per_head + q_out[: nh * hd].reshape(nh, hd).sum(1)
        head_scores.append(per_head.cpu())
        down = block.get_submodule(layout.mlp_out)
        width = _in_sq(down)
        for path in layout.mlp_in:
            rows = _out_sq(block.get_submodule(path))
            width = width + (rows.reshape(2, -1).sum(0) if layout.mlp_fused_halves else rows)
        ffn_scores.append(width.cpu())
        for path in layout.attn_inputs:
            hidden = hidden + _in_sq(attn.get_submodule(path))
        hidden = hidden + _out_sq(o) + _out_sq(down)
        for path in layout.mlp_in:
            hidden = hidden + _in_sq(block.get_submodule(path))
    return DecoderScores(head_scores, ffn_scores, hidden.cpu())
