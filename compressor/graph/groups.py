"""What the engine exposes about a prunable group: its units, its members, their tensors.

A *group* is a set of channels that must be removed together (a producer's outputs, every
norm and residual branch they pass through, and the inputs of every consumer). Its *units*
are what a stage chooses among: one channel; for attention, one whole head; for grouped
convolutions, split/chunk GLUs and packed projections, the channels at the same position of
every block (``interleave`` blocks), so that every block keeps the same width.

Root channel ``c`` of a group of ``width`` channels belongs to unit
``(c % (width // interleave)) // unit_size``.

Each :class:`Member` is one module the group touches, with its role (``producer`` computes
the channels, ``consumer`` reads them, ``passthrough`` is per-channel in and out, like a norm
or a depthwise convolution) and which of its own channels move with which root channel.
That is what importance criteria read, and what merging units (fold a removed unit's
outgoing weights into a kept one) needs: producers' rows and consumers' columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from compressor.graph.layers import in_features, is_linear, is_transposed_linear, out_features

PRODUCER, CONSUMER, PASSTHROUGH = "producer", "consumer", "passthrough"
HEADS, CHANNELS = "heads", "channels"
# Group tags: an FFN (MLP) width inside a transformer block; the hidden size (embedding width /
# residual stream of a transformer).
FFN = "ffn"
HIDDEN = "hidden"


def is_depthwise(module: nn.Module) -> bool:
    """A convolution whose every output channel reads only its own input channel."""
    return (
        isinstance(module, _ConvNd)
        and module.groups == module.out_channels == module.in_channels
        and module.groups > 1
    )


def role_of(module: nn.Module, out_side: bool) -> str:
    """Producer, consumer or passthrough, for a module on the given side of a group."""
    if isinstance(module, nn.Embedding):
        return PRODUCER
    if is_depthwise(module):
        return PASSTHROUGH
    if isinstance(module, _ConvNd) or is_linear(module):
        return PRODUCER if out_side else CONSUMER
    return PASSTHROUGH


def channel_dims(module: nn.Module, role: str) -> dict[str, int]:
    """Which tensor dimension of each parameter/buffer indexes the group's channels."""
    if isinstance(module, nn.Linear):
        return {"weight": 0, "bias": 0} if role == PRODUCER else {"weight": 1}
    if is_transposed_linear(module):  # weight is (in, out)
        return {"weight": 1, "bias": 0} if role == PRODUCER else {"weight": 0}
    if isinstance(module, _ConvNd):
        if role == PASSTHROUGH:  # depthwise
            return {"weight": 0, "bias": 0}
        out_dim = 1 if module.transposed else 0
        return {"weight": out_dim, "bias": 0} if role == PRODUCER else {"weight": 1 - out_dim}
    if isinstance(module, nn.Embedding):
        return {"weight": 1}
    if isinstance(module, nn.LayerNorm):
        last = len(module.normalized_shape) - 1
        return {"weight": last, "bias": last}
    if isinstance(module, (_BatchNorm, _InstanceNorm)):
        return {"weight": 0, "bias": 0, "running_mean": 0, "running_var": 0}
    if isinstance(module, (nn.GroupNorm, nn.PReLU)):
        return {"weight": 0, "bias": 0}
    return {}


def channel_count(module: nn.Module, role: str) -> int | None:
    """How many channels the module has on the side the group touches."""
    if is_linear(module):
        return out_features(module) if role == PRODUCER else in_features(module)
    if isinstance(module, _ConvNd):
        return module.in_channels if role == CONSUMER else module.out_channels
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, (_BatchNorm, _InstanceNorm)):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.PReLU):
        return module.num_parameters
    return None


@dataclass(frozen=True)
class Member:
    """One module a group touches.

    Attributes:
        name: the module's qualified name in the model.
        module: the module itself.
        role: ``producer`` | ``consumer`` | ``passthrough``.
        index: the module's own channel numbers that belong to the group (1-D long tensor).
        root: for each entry of ``index``, the group's root channel it moves with.
    """

    name: str
    module: nn.Module = field(repr=False, compare=False)
    role: str
    index: torch.Tensor = field(repr=False, compare=False)
    root: torch.Tensor = field(repr=False, compare=False)

    @property
    def side(self) -> str:
        """``out`` (the module's output channels) or ``in`` (its input channels)."""
        return "in" if self.role == CONSUMER else "out"

    def entries(self, attr: str = "weight", tensor: torch.Tensor | None = None):
        """The slice of ``attr`` (or of ``tensor``, same shape, e.g. its gradient) that each
        entry of ``index`` owns, as a ``(len(index), -1)`` matrix; None without that tensor.

        For a producer these are the weight rows (and bias), for a consumer the weight
        columns: what importance criteria measure and what merging units rewrites.
        """
        dims = channel_dims(self.module, self.role)
        if attr not in dims:
            return None
        t = tensor if tensor is not None else getattr(self.module, attr, None)
        if t is None:
            return None
        index = self.index.to(t.device)
        module = self.module
        if self.role == CONSUMER and isinstance(module, _ConvNd) and module.groups > 1:
            # Input channel c of a grouped conv is read by the outputs of group c // per_group,
            # at position c % per_group of their kernels.
            per_group = t.shape[1]
            grouped = t.reshape(module.groups, t.shape[0] // module.groups, per_group, -1)
            picked = grouped[index // per_group, :, index % per_group]
            return picked.reshape(len(index), -1)
        return t.movedim(dims[attr], 0).index_select(0, index).reshape(len(index), -1)


@dataclass
class UnitGroup:
    """Channels that are removed together, split into the units a stage chooses among.

    Attributes:
        id: stable name (the root module, or the attention module for a head group).
        kind: ``channels`` or ``heads``.
        width: number of root channels.
        interleave: blocks that must keep equal widths (grouped conv, chunked GLU, packed qkv).
        unit_size: channels per block in one unit (the head size for heads, else 1).
        members: every module the group touches.
        names: names a plan's ``modules:``/``amounts:`` patterns are matched against.
        tags: extra facts (``ffn``: the MLP width of a transformer block).
        blocked: why the group must not be pruned (None when it may).
        unsupported: ``name (type)`` of modules in the group that the engine cannot edit.
        attention: the attention module whose heads these are (head groups only).
        spans: the units each member reads when that is not all of them (the pieces of a
            split by stored sizes, MixNet's mixed convolutions): each must keep one unit,
            or its layer would be left with no channels.
    """

    id: str
    kind: str
    width: int
    interleave: int
    unit_size: int
    members: list[Member]
    names: tuple[str, ...]
    tags: frozenset[str] = frozenset()
    blocked: str | None = None
    unsupported: tuple[str, ...] = ()
    attention: Any = None
    spans: tuple[frozenset[int], ...] = ()
    handle: Any = field(default=None, repr=False)  # engine-private (the dependency root)

    @property
    def size(self) -> int:
        """Number of units."""
        return self.width // (self.interleave * self.unit_size)

    @property
    def unit_width(self) -> int:
        """Root channels per unit."""
        return self.interleave * self.unit_size

    def unit_of(self, root: torch.Tensor) -> torch.Tensor:
        """The unit of each root channel in ``root``."""
        return (root % (self.width // self.interleave)) // self.unit_size

    def channels(self, units) -> list[int]:
        """The root channels of ``units``, sorted."""
        block = self.width // self.interleave
        return sorted(
            k * block + u * self.unit_size + j
            for u in units
            for k in range(self.interleave)
            for j in range(self.unit_size)
        )

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == PRODUCER]

    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.role == CONSUMER]
