"""Module types a stage may swap into a model, and how to rebuild them without pickle.

A stage that replaces a module (an attention block with fewer heads, a factorised embedding,
an Identity for a dropped block) must use a type registered here, so that the structure
manifest can name it and ``compressor.load`` can rebuild it from a small JSON config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import CheckpointError, ExportError


@dataclass(frozen=True)
class Rebuildable:
    key: str
    cls: type[nn.Module]
    to_config: Callable[[nn.Module], dict[str, Any]]
    from_config: Callable[[dict[str, Any]], nn.Module]


_BY_KEY: dict[str, Rebuildable] = {}
_BY_CLASS: dict[type, Rebuildable] = {}


def register_rebuildable(
    key: str,
    cls: type[nn.Module],
    to_config: Callable[[nn.Module], dict[str, Any]],
    from_config: Callable[[dict[str, Any]], nn.Module],
) -> None:
    entry = Rebuildable(key, cls, to_config, from_config)
    _BY_KEY[key] = entry
    _BY_CLASS[cls] = entry


def rebuild_config(module: nn.Module, name: str) -> tuple[str, dict[str, Any]]:
    entry = _BY_CLASS.get(type(module))
    if entry is None:
        raise ExportError(
            f"module {name!r} was replaced by a {type(module).__qualname__}, which compress "
            "cannot rebuild without pickle",
            hint="stages may only swap in types registered in compressor.rebuildable",
        )
    return entry.key, entry.to_config(module)


def build_from_config(key: str, config: dict[str, Any]) -> nn.Module:
    entry = _BY_KEY.get(key)
    if entry is None:
        raise CheckpointError(
            f"the file needs module type {key!r}, which this version of compress does not know",
            hint="upgrade compress to the version that wrote the file",
        )
    return entry.from_config(config)


def _attrs(*names: str) -> Callable[[nn.Module], dict[str, Any]]:
    def to_config(module: nn.Module) -> dict[str, Any]:
        return {n: getattr(module, n) for n in names}

    return to_config


register_rebuildable("torch.Identity", nn.Identity, lambda m: {}, lambda c: nn.Identity())
register_rebuildable(
    "torch.Linear",
    nn.Linear,
    lambda m: {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "bias": m.bias is not None,
    },
    lambda c: nn.Linear(c["in_features"], c["out_features"], bias=c["bias"]),
)
register_rebuildable(
    "torch.Embedding",
    nn.Embedding,
    lambda m: {
        "num_embeddings": m.num_embeddings,
        "embedding_dim": m.embedding_dim,
        "padding_idx": m.padding_idx,
    },
    lambda c: nn.Embedding(c["num_embeddings"], c["embedding_dim"], padding_idx=c["padding_idx"]),
)
register_rebuildable(
    "torch.LayerNorm",
    nn.LayerNorm,
    lambda m: {
        "normalized_shape": list(m.normalized_shape),
        "eps": m.eps,
        "elementwise_affine": m.elementwise_affine,
        "bias": m.bias is not None,
    },
    lambda c: nn.LayerNorm(
        c["normalized_shape"],
        eps=c["eps"],
        elementwise_affine=c["elementwise_affine"],
        bias=c["bias"],
    ),
)


# ------------------------------------------------------------------ attention with removable heads


class HeadPrunedMHA(nn.Module):
    """``nn.MultiheadAttention`` with its own head count and head size, so heads can be removed.

    torch's module ties its inner width to ``embed_dim``; here the query/key/value projections
    map ``embed_dim`` to ``num_heads * head_dim`` and ``out_proj`` maps back, so removing heads
    leaves the model's hidden size alone. Built by :meth:`from_mha` it computes the same
    function as the original, with the same call signature and outputs. A 3-D (per-head)
    ``attn_mask`` must match the current head count.
    """

    # nn.TransformerEncoderLayer reads these to choose its fused fast path; "no packed
    # projection" keeps it on the plain path, which calls this module.
    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.kdim = kdim or embed_dim
        self.vdim = vdim or embed_dim
        self.dropout = dropout
        self.batch_first = batch_first
        inner = num_heads * head_dim
        self.query = nn.Linear(embed_dim, inner, bias=bias)
        self.key = nn.Linear(self.kdim, inner, bias=bias)
        self.value = nn.Linear(self.vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> HeadPrunedMHA:
        """The same attention as ``mha`` (weights copied), with separate projections.

        Raises:
            ValueError: ``mha`` uses ``add_bias_kv`` or ``add_zero_attn`` (not supported).
        """
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("attention with add_bias_kv or add_zero_attn cannot be converted")
        bias = mha.in_proj_bias is not None
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            mha.head_dim,
            kdim=mha.kdim,
            vdim=mha.vdim,
            bias=bias,
            dropout=mha.dropout,
            batch_first=mha.batch_first,
        )
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().split(mha.embed_dim, dim=0)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.detach().split(mha.embed_dim) if bias else (None,) * 3
        ref = mha.out_proj.weight
        new.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for proj, w, b in zip((new.query, new.key, new.value), weights, biases, strict=True):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # (sequence, batch, features) from here on, like torch's own implementation.
        tgt, batch, _ = query.shape
        src = key.shape[0]
        # -1 heads: the projection width decides, so removed heads need no other change here.
        q = self.query(query).view(tgt, batch, -1, self.head_dim).permute(1, 2, 0, 3)
        k = self.key(key).view(src, batch, -1, self.head_dim).permute(1, 2, 3, 0)
        v = self.value(value).view(src, batch, -1, self.head_dim).permute(1, 2, 0, 3)
        scores = (q * self.head_dim**-0.5) @ k  # (batch, heads, tgt, src)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(tgt, src, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.view(batch, -1, tgt, src)
            scores = _add_mask(scores, attn_mask)
        if key_padding_mask is not None:
            scores = _add_mask(scores, key_padding_mask[:, None, None, :])
        weights = scores.softmax(dim=-1)
        if self.training and self.dropout > 0:
            weights = nn.functional.dropout(weights, p=self.dropout)
        context = (weights @ v).permute(2, 0, 1, 3).reshape(tgt, batch, -1)
        out = self.out_proj(context)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights.squeeze(0) if unbatched else weights


def _add_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch's convention: True (bool) means "may not attend"; a float mask is added.
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask


register_rebuildable(
    "compress.HeadPrunedMHA",
    HeadPrunedMHA,
    lambda m: {
        "embed_dim": m.embed_dim,
        "num_heads": m.num_heads,
        "head_dim": m.head_dim,
        "kdim": m.kdim,
        "vdim": m.vdim,
        "bias": m.query.bias is not None,
        "dropout": m.dropout,
        "batch_first": m.batch_first,
    },
    lambda c: HeadPrunedMHA(
        c["embed_dim"],
        c["num_heads"],
        c["head_dim"],
        kdim=c["kdim"],
        vdim=c["vdim"],
        bias=c["bias"],
        dropout=c["dropout"],
        batch_first=c["batch_first"],
    ),
)


# ------------------------------------------------------------------ low-rank token embeddings


class FactorizedEmbedding(nn.Module):
    """A token embedding table stored as a low-rank product ``E ≈ codes @ basis``.

    ``codes`` is ``(num_embeddings, rank)``, ``basis`` is ``(rank, embedding_dim)``: a lookup
    gathers rows of ``codes`` and multiplies them by ``basis``, so the model's hidden size and
    every consumer of the embeddings stay as they were. Made by
    ``compressor.stages.embeddings.factorize.factorize_embedding``.
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None = None
    ):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.rank = rank
        # Kept for code that reads it (transformers does); padding rows are ordinary rows here.
        self.padding_idx = padding_idx
        self.codes = nn.Parameter(torch.zeros(num_embeddings, rank))
        self.basis = nn.Parameter(torch.zeros(rank, embedding_dim))

    @property
    def weight(self) -> torch.Tensor:
        """The full table the factors stand for (computed; for code that reads ``.weight``)."""
        return self.codes @ self.basis

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.codes) @ self.basis

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"


register_rebuildable(
    "compress.FactorizedEmbedding",
    FactorizedEmbedding,
    _attrs("num_embeddings", "embedding_dim", "rank", "padding_idx"),
    lambda c: FactorizedEmbedding(
        c["num_embeddings"], c["embedding_dim"], c["rank"], padding_idx=c.get("padding_idx")
    ),
)
