"""Channel counts that modules store as plain attributes and use in ``forward``, kept true
after channels are removed.

Torch-Pruning edits tensors; a module whose ``forward`` reshapes or splits by a number it
stored at construction then breaks (the verify run fails, and the group used to be refused).
Two layouts are recognised from what the module holds, not from its class:

* a per-channel parameter reshaped to a stored shape: timm's ``Scale`` (PoolFormer's layer
  scale) does ``x * self.scale.view(self.shape)`` with ``shape = (dim, 1, 1)``. Recognised
  when the module has exactly one parameter of its own, one dimension, and a tuple attribute
  whose product is that parameter's length with a single entry above 1.
* a split by stored sizes over child layers: timm's ``MixedConv2d`` (MixNet) does
  ``torch.split(x, self.splits, 1)`` and feeds piece ``i`` to child ``i``. Recognised when a
  list attribute has one entry per child layer, each equal to that child's input channels;
  the container's own ``in_channels``/``out_channels`` totals follow too.

The attributes are captured before any edit (while they still agree with the tensors) and
synchronised after each; the structure manifest records them (``set_attrs``), so a reload
replays them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

from compressor.graph.groups import CONSUMER, PRODUCER, channel_count
from compressor.graph.layers import is_linear


@dataclass(frozen=True)
class _ParameterShape:
    module: nn.Module
    attr: str
    position: int  # the entry that holds the channel count


@dataclass(frozen=True)
class _SplitSizes:
    module: nn.Module
    attr: str
    children: tuple[nn.Module, ...]
    totals: tuple[str, ...]  # in_channels/out_channels attributes that equal the sums


class StoredWidths:
    """Every stored channel count of ``model`` the engine keeps true (see module docstring)."""

    def __init__(self, model: nn.Module):
        self.shapes: list[_ParameterShape] = []
        self.splits: list[_SplitSizes] = []
        for module in model.modules():
            self.shapes.extend(_parameter_shapes(module))
            self.splits.extend(_split_sizes(module))

    def sync(self) -> None:
        """Set each captured attribute from the current tensor widths."""
        for ref in self.shapes:
            (param,) = (p for p in ref.module._parameters.values() if p is not None)
            shape = list(getattr(ref.module, ref.attr))
            shape[ref.position] = int(param.numel())
            setattr(ref.module, ref.attr, tuple(shape))
        for ref in self.splits:
            sizes = [in_channels_of(c) for c in ref.children]
            setattr(ref.module, ref.attr, sizes)
            for total in ref.totals:
                width_of = in_channels_of if total == "in_channels" else out_channels_of
                setattr(ref.module, total, sum(width_of(c) for c in ref.children))


def _parameter_shapes(module: nn.Module) -> list[_ParameterShape]:
    params = [p for p in module._parameters.values() if p is not None]
    if len(params) != 1 or params[0].dim() != 1 or params[0].numel() < 2:
        return []
    numel = params[0].numel()
    found = []
    for attr, value in vars(module).items():
        if attr.startswith("_") or not isinstance(value, tuple) or not value:
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            continue
        big = [i for i, v in enumerate(value) if v > 1]
        if len(big) == 1 and math.prod(value) == numel:
            found.append(_ParameterShape(module, attr, big[0]))
    return found


def _split_sizes(module: nn.Module) -> list[_SplitSizes]:
    children = tuple(module.children())
    if len(children) < 2:
        return []
    widths = [in_channels_of(c) for c in children]
    if any(w is None for w in widths):
        return []
    found = []
    for attr, value in vars(module).items():
        if attr.startswith("_") or not isinstance(value, list) or value != widths:
            continue
        totals = tuple(
            name
            for name, width in (
                ("in_channels", sum(widths)),
                ("out_channels", sum(out_channels_of(c) or 0 for c in children)),
            )
            if getattr(module, name, None) == width
        )
        found.append(_SplitSizes(module, attr, children, totals))
    return found


def in_channels_of(module: nn.Module) -> int | None:
    """A convolution's or Linear's input width (None for any other module)."""
    layer = isinstance(module, _ConvNd) or is_linear(module)
    return channel_count(module, CONSUMER) if layer else None


def out_channels_of(module: nn.Module) -> int | None:
    """A convolution's or Linear's output width (None for any other module)."""
    layer = isinstance(module, _ConvNd) or is_linear(module)
    return channel_count(module, PRODUCER) if layer else None
