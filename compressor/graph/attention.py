"""Finding attention blocks, so that their heads are removed whole and their attributes kept
true, and swapping torch's ``nn.MultiheadAttention`` for a form whose heads can be removed.

An attention block is recognised by what it holds, not by its class: an integer head count
(``num_heads``, ``num_attention_heads``, ``n_heads`` or ``n_head``) and query/key/value
``nn.Linear`` children (``query/key/value``, ``q_proj/k_proj/v_proj``, ``q_lin/k_lin/v_lin``
or ``q/k/v``), or one packed projection (a ``qkv`` Linear, or GPT-2's ``c_attn``, a
transformers ``Conv1D``). That covers Hugging Face BERT, RoBERTa, DistilBERT, ViT and GPT-2,
the sample text transformer, timm-style ViT blocks and compress's own ``HeadPrunedMHA``. After
heads are removed, the head count and any total-size attribute (``all_head_size``,
``inner_dim``, GPT-2's ``split_size``, timm's ``attn_dim``) are updated; the head size and the
hidden size (``dim``, ``embed_dim``) stay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from compressor.graph.layers import is_linear, out_features
from compressor.rebuildable import HeadPrunedMHA

HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
HEAD_SIZE_ATTRS = ("head_dim", "attention_head_size", "head_size", "d_head")
# split_size: GPT-2 splits its packed c_attn output into query/key/value of this width.
# attn_dim: timm's Attention reshapes its output to (B, N, attn_dim) before the projection.
TOTAL_SIZE_ATTRS = ("all_head_size", "inner_dim", "split_size", "attn_dim")
QKV_NAMES = (
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_lin", "k_lin", "v_lin"),
    ("q", "k", "v"),
)
PACKED_NAMES = ("qkv", "c_attn", "to_qkv")


@dataclass(frozen=True)
class AttentionRef:
    """One attention block: where its head count lives and which projections make heads."""

    name: str
    module: nn.Module
    heads_attr: str
    head_dim: int
    projections: tuple[nn.Module, ...]  # q, k, v (or the one packed qkv projection)

    @property
    def num_heads(self) -> int:
        return int(getattr(self.module, self.heads_attr))

    @property
    def packed(self) -> bool:
        return len(self.projections) == 1

    def remove_heads(self, count: int) -> None:
        """Update the head count and total-size attributes after ``count`` heads went."""
        heads = self.num_heads - count
        setattr(self.module, self.heads_attr, heads)
        for attr in TOTAL_SIZE_ATTRS:
            if isinstance(getattr(self.module, attr, None), int):
                setattr(self.module, attr, heads * self.head_dim)


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> str | None:
    for attr in names:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return attr
    return None


def _projections(module: nn.Module) -> tuple[nn.Module, ...] | None:
    children = dict(module.named_children())
    for names in QKV_NAMES:
        found = [children.get(n) for n in names]
        if all(p is not None and is_linear(p) for p in found):
            return tuple(found)
    for name in PACKED_NAMES:
        if children.get(name) is not None and is_linear(children[name]):
            return (children[name],)
    return None


def find_attention(model: nn.Module) -> dict[int, AttentionRef]:
    """Every recognised attention block, keyed by ``id()`` of each of its projections."""
    found: dict[int, AttentionRef] = {}
    for name, module in model.named_modules():
        heads_attr = _int_attr(module, HEAD_COUNT_ATTRS)
        projections = _projections(module) if heads_attr else None
        if not projections:
            continue
        heads = getattr(module, heads_attr)
        size_attr = _int_attr(module, HEAD_SIZE_ATTRS)
        per_projection = out_features(projections[0]) // (3 if len(projections) == 1 else 1)
        head_dim = getattr(module, size_attr) if size_attr else per_projection // heads
        if head_dim * heads != per_projection:
            continue  # not the layout we understand (e.g. grouped-query attention)
        ref = AttentionRef(name, module, heads_attr, head_dim, projections)
        for projection in projections:
            found[id(projection)] = ref
    return found


def block_prefix(name: str) -> str:
    """The transformer block an attention module sits in: the name up to its last numeric
    component (``encoder.layer.3.attention.self`` -> ``encoder.layer.3``), else its parent."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1])


def swap_multihead_attention(model: nn.Module, skip: Callable[[str], bool]) -> list[str]:
    """Replace each ``nn.MultiheadAttention`` (not skipped) by an equivalent
    :class:`~compressor.rebuildable.HeadPrunedMHA`, in place. Returns the names replaced.

    torch's module cannot have an inner width other than its ``embed_dim``, so its heads can
    only go once it is in this form; the function computed is unchanged. Modules using
    ``add_bias_kv``/``add_zero_attn`` stay as they are (their heads are then not prunable).
    ``nn.TransformerEncoder`` stacks stop using their nested-tensor inference shortcut.
    """
    replaced = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.MultiheadAttention or not name or skip(name):
            continue
        if module.bias_k is not None or module.add_zero_attn:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, HeadPrunedMHA.from_mha(module))
        replaced.append(name)
    if replaced:
        # nn.TransformerEncoder may pack padded batches into nested tensors for torch's fused
        # attention kernel; the replacement computes attention itself, on plain tensors. Real
        # positions are unchanged; padded ones are computed rather than zero (as in training).
        for module in model.modules():
            if isinstance(module, nn.TransformerEncoder):
                module.use_nested_tensor = False
    return replaced
