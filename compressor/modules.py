"""Module types a stage may swap into a model, and how to rebuild them without pickle.

A stage that replaces a module (an attention block with fewer heads, a factorised embedding,
an Identity for a dropped block) must use a type registered here, so that the structure
manifest can name it and ``compressor.load`` can rebuild it from a small JSON config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
            hint="stages may only swap in types registered in compressor.modules",
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
    lambda m: {"in_features": m.in_features, "out_features": m.out_features,
               "bias": m.bias is not None},
    lambda c: nn.Linear(c["in_features"], c["out_features"], bias=c["bias"]),
)
register_rebuildable(
    "torch.Embedding",
    nn.Embedding,
    lambda m: {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim,
               "padding_idx": m.padding_idx},
    lambda c: nn.Embedding(c["num_embeddings"], c["embedding_dim"], padding_idx=c["padding_idx"]),
)
register_rebuildable(
    "torch.LayerNorm",
    nn.LayerNorm,
    lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
               "elementwise_affine": m.elementwise_affine, "bias": m.bias is not None},
    lambda c: nn.LayerNorm(c["normalized_shape"], eps=c["eps"],
                           elementwise_affine=c["elementwise_affine"], bias=c["bias"]),
)
