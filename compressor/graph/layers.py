"""Layers Torch-Pruning has no editor for, and the editors the engine adds for them.

GPT-2 (and OpenAI GPT, and models copied from them) use transformers' ``Conv1D``: a Linear
whose weight is stored transposed, ``(in_features, out_features)``, with the widths in
``nx``/``nf``. Torch-Pruning would see its weight as a loose parameter and prune the wrong
axis; :class:`TransposedLinearPruner` edits it as the Linear it is.

The layer is recognised by what it holds (class name ``Conv1D``, integer ``nf``/``nx`` and a
``(nx, nf)`` weight), so that this package never has to import transformers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp


def is_transposed_linear(module: nn.Module) -> bool:
    """transformers' ``Conv1D``: ``y = x @ weight + bias`` with ``weight`` of shape (nx, nf)."""
    if type(module).__name__ != "Conv1D":
        return False
    weight = getattr(module, "weight", None)
    nf, nx = getattr(module, "nf", None), getattr(module, "nx", None)
    return (
        isinstance(nf, int)
        and isinstance(nx, int)
        and isinstance(weight, torch.Tensor)
        and tuple(weight.shape) == (nx, nf)
    )


def is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a transposed one (``Conv1D``)."""
    return isinstance(module, nn.Linear) or is_transposed_linear(module)


def out_features(module: nn.Module) -> int:
    """Output width of a Linear or ``Conv1D``."""
    return module.nf if is_transposed_linear(module) else module.out_features


def in_features(module: nn.Module) -> int:
    """Input width of a Linear or ``Conv1D``."""
    return module.nx if is_transposed_linear(module) else module.in_features


def transposed_linear_types(model: nn.Module) -> list[type]:
    """The ``Conv1D`` classes used in ``model`` (several copies of transformers may coexist)."""
    return list(dict.fromkeys(type(m) for m in model.modules() if is_transposed_linear(m)))


class TransposedLinearPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning editor for ``Conv1D``: output channels are weight columns (and bias
    entries), input channels weight rows; ``nf``/``nx`` follow, since ``Conv1D.forward``
    shapes its output with ``nf``."""

    TARGET_MODULES = None  # the class is only known at run time (see is_transposed_linear)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = _kept(layer.nf, idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        if layer.bias is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = _kept(layer.nx, idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        layer.nx = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.nf

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.nx


def _kept(width: int, removed: Sequence[int]) -> list[int]:
    gone = set(int(i) for i in removed)
    return [i for i in range(width) if i not in gone]


def customized_pruners(model: nn.Module) -> dict[type, tp.pruner.function.BasePruningFunc]:
    """The extra editors ``model`` needs, for ``DependencyGraph.build_dependency``."""
    return {cls: TransposedLinearPruner() for cls in transposed_linear_types(model)}
