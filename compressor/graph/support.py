"""Guards around every edit: which layers the engine can edit, model outputs, tied weights."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from compressor.errors import StageError
from compressor.graph.groups import UnitGroup
from compressor.graph.layers import is_transposed_linear

# Layers whose channels the engine can edit (through Torch-Pruning's per-layer editors), plus
# transformers' Conv1D (compressor.graph.layers).
EDITABLE = (
    nn.Linear,
    _ConvNd,
    _BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    _InstanceNorm,
    nn.Embedding,
    nn.PReLU,
)


def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) model output: tensors, tuples/lists, dicts, ModelOutputs."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping) or (hasattr(obj, "keys") and hasattr(obj, "values")):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in flatten_tensors(item)]
    return []


def unsupported_reason(module: nn.Module) -> str | None:
    """Why the engine cannot edit this module's channels (None when it can)."""
    if not isinstance(module, EDITABLE) and not is_transposed_linear(module):
        return "no channel editor for this layer type"
    if isinstance(module, _ConvNd) and module.transposed and module.groups > 1:
        return "grouped transposed convolutions are not supported"
    return None


def check_supported(group: UnitGroup) -> None:
    """Raise the user-facing error for a group holding layers the engine cannot edit."""
    if group.unsupported:
        first = group.unsupported[0].split(" ")[0]
        raise StageError(
            f"group {group.id!r} would edit {', '.join(group.unsupported)}, which compress "
            "cannot prune (no channel editor for that layer type)",
            hint=f"leave it out: add it to the stage's ignore list (ignore: [{first}])",
        )


def tied_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    owners: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for module in model.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                owners[id(p)].append((module, attr))
    return [v for v in owners.values() if len(v) > 1]


def retie(tied: list[list[tuple[nn.Module, str]]]) -> None:
    # Each editor makes a new Parameter, so a tied weight edited through two modules comes
    # back as two equal copies: make them one Parameter again.
    for owners in tied:
        params = [m._parameters[a] for m, a in owners]
        first = params[0]
        if all(p is first for p in params):
            continue
        if any(p.shape != first.shape for p in params):
            raise StageError(
                "pruning would untie a shared weight (its users were pruned differently): "
                + ", ".join(
                    f"{type(m).__name__}.{a} {tuple(p.shape)}"
                    for (m, a), p in zip(owners, params, strict=True)
                ),
                hint="ignore one of the modules that share the weight",
            )
        for module, attr in owners:
            module._parameters[attr] = first
