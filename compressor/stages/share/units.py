"""What merging the units of one group needs: which groups qualify, each unit's incoming
vector (batch norm folded in) or activations, its outgoing columns, and the fold itself.

A unit ``j`` can be merged into a kept unit ``i`` when its pre-activation is (nearly) a positive
multiple of ``i``'s, ``z_j = s * z_i``: through a positively homogeneous path (ReLU, LeakyReLU,
max/avg pooling, residual additions whose every branch is scaled alike) its output is then
``s * out_i``, so every consumer computes the same with column ``j`` folded into column ``i``
(``W[:, i] += s * W[:, j]``) and unit ``j`` removed. Batch norm directly after a producer is a
per-unit affine map, so it is folded into the incoming vector; any other per-channel layer in
the group (LayerNorm mixes channels, depthwise convolutions filter them) makes the group
ineligible, and so do attention heads (softmax is not homogeneous) and grouped channels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from compressor.graph import CONSUMER, HEADS, PASSTHROUGH, PRODUCER, Member, UnitGroup
from compressor.graph.groups import channel_dims


@dataclass
class MergeGroup:
    """A group that merging can edit, with its members' entries ordered by unit.

    Attributes:
        group: the engine's group (fresh: described after the last edit).
        producers: ``(producer, batch norm after it or None)``.
        consumers: the members that read the units.
        rows: per member name, the member's entry positions ordered by unit (one per unit).
        columns: per consumer name, ``[units, per_unit]`` own channel numbers of each unit.
    """

    group: UnitGroup
    producers: list[tuple[Member, Member | None]]
    consumers: list[Member]
    rows: dict[str, torch.Tensor]
    columns: dict[str, torch.Tensor]

    @property
    def size(self) -> int:
        return self.group.size


def norm_parents(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[nn.Module, nn.Module]:
    """For each batch norm fed directly by a Linear/conv output: ``norm -> that layer``.

    Found by running the model once and matching the norm's input tensor to the producer's
    output tensor (the graph says which modules share channels, not in which order).
    """
    outputs: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    inputs_of: dict[nn.Module, int] = {}
    handles = []

    def producer_hook(module, _args, output):
        # The tensor is kept alive with its id, so no later tensor can reuse the id.
        outputs[id(output)] = (module, output)

    def norm_hook(module, args):
        if args and isinstance(args[0], torch.Tensor):
            inputs_of[module] = id(args[0])

    for module in model.modules():
        if isinstance(module, (nn.Linear, _ConvNd)):
            handles.append(module.register_forward_hook(producer_hook))
        elif isinstance(module, _BatchNorm):
            handles.append(module.register_forward_pre_hook(norm_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {norm: outputs[t][0] for norm, t in inputs_of.items() if t in outputs}


def _ordered(group: UnitGroup, member: Member) -> torch.Tensor | None:
    """Positions of ``member``'s entries ordered by unit; None unless one entry per unit."""
    units = group.unit_of(member.root)
    if len(units) != group.size or not torch.equal(units.sort().values, torch.arange(group.size)):
        return None
    return torch.argsort(units)


def _columns(group: UnitGroup, member: Member) -> torch.Tensor | None:
    """Own channel numbers of each unit, ``[units, per_unit]`` (flatten: several per unit)."""
    units = group.unit_of(member.root)
    counts = torch.bincount(units, minlength=group.size)
    if len(counts) != group.size or int(counts.min()) != int(counts.max()) or counts[0] == 0:
        return None
    order = torch.argsort(units * (int(member.index.max()) + 1) + member.index, stable=True)
    return member.index[order].reshape(group.size, -1)


def eligible(group: UnitGroup, parents: dict[nn.Module, nn.Module]) -> MergeGroup | str:
    """The group prepared for merging, or why it cannot be merged (one readable line)."""
    if group.blocked:
        return group.blocked
    if group.kind == HEADS:
        return "attention heads are not merged (softmax is not positively homogeneous)"
    if group.interleave != 1 or group.unit_size != 1:
        return "its channels are interleaved (grouped convolution, GLU or packed projection)"
    if group.unsupported:
        return f"it holds layers the engine cannot edit: {', '.join(group.unsupported)}"
    if group.size < 2:
        return "it has a single unit"
    producers = [m for m in group.members if m.role == PRODUCER]
    by_module = {id(m.module): m for m in producers}
    norms: dict[int, Member] = {}
    rows: dict[str, torch.Tensor] = {}
    for m in group.members:
        if m.role == PASSTHROUGH:
            parent = parents.get(m.module)
            fed = isinstance(m.module, _BatchNorm) and m.module.track_running_stats
            if not fed or parent is None or id(parent) not in by_module:
                return (
                    f"{m.name} ({type(m.module).__name__}) sits between producers and consumers "
                    "and is not a batch norm right after a producer"
                )
            norms[id(parent)] = m
        elif m.role == PRODUCER and not isinstance(m.module, (nn.Linear, _ConvNd)):
            return f"{m.name} ({type(m.module).__name__}) produces the units"
        elif m.role == CONSUMER and isinstance(m.module, _ConvNd) and m.module.groups > 1:
            return f"{m.name} is a grouped convolution"
        if m.role != CONSUMER:
            order = _ordered(group, m)
            if order is None:
                return f"{m.name} does not hold exactly one channel per unit"
            rows[m.name] = order
    consumers = [m for m in group.members if m.role == CONSUMER]
    columns = {}
    for m in consumers:
        cols = _columns(group, m)
        if cols is None:
            return f"{m.name} reads the units unevenly"
        columns[m.name] = cols
    if not producers or not consumers:
        return "it has no producer or no consumer to fold into"
    pairs = [(p, norms.get(id(p.module))) for p in producers]
    return MergeGroup(group, pairs, consumers, rows, columns)


def _block_normalised(blocks: list[torch.Tensor]) -> torch.Tensor:
    # One constant per block keeps proportionality (the same s in every block) while no
    # producer or consumer drowns the others by sheer size.
    scaled = [b / b.norm().clamp_min(1e-12) * b.shape[0] ** 0.5 for b in blocks]
    return torch.cat(scaled, dim=1)


@torch.no_grad()
def weight_vectors(mg: MergeGroup) -> torch.Tensor:
    """Each unit's incoming vector ``[units, D]`` (float64): weights and bias of every
    producer, with the batch norm after it folded in (the pre-activation's coefficients)."""
    blocks = []
    for producer, norm in mg.producers:
        order = mg.rows[producer.name]
        w = producer.entries("weight").double()[order]
        b = producer.entries("bias")
        if b is None:
            b = torch.zeros(len(order), 1, dtype=w.dtype, device=w.device)
        else:
            b = b.double()[order]
        if norm is not None:
            bn: _BatchNorm = norm.module
            norder = mg.rows[norm.name]

            def stat(attr, n=norm, o=norder):
                return n.entries(attr).double()[o]

            scale = 1.0 / (stat("running_var") + bn.eps).sqrt()
            shift = -stat("running_mean") * scale
            if bn.affine:
                scale, shift = scale * stat("weight"), shift * stat("weight") + stat("bias")
            w, b = w * scale, b * scale + shift
        blocks.append(torch.cat([w, b], dim=1))
    return _block_normalised(blocks)


@torch.no_grad()
def outgoing_matrix(mg: MergeGroup) -> torch.Tensor:
    """Each unit's outgoing columns over every consumer, ``[units, M]`` (float64, each
    consumer scaled to the same total): what folding rewrites, and what losing a unit costs
    downstream."""
    blocks = []
    for c in mg.consumers:
        cols = mg.columns[c.name]
        blocks.append(_consumer_view(c)[cols.reshape(-1)].reshape(mg.size, -1).double())
    return _block_normalised(blocks)


def _consumer_view(member: Member) -> torch.Tensor:
    """The consumer's weight with its input-channel axis first (a view: writes go through)."""
    dim = channel_dims(member.module, CONSUMER)["weight"]
    return member.module.weight.data.movedim(dim, 0)


@torch.no_grad()
def fold(mg: MergeGroup, removed: int, kept: int, scale: float) -> None:
    """Add ``scale`` times unit ``removed``'s outgoing columns to unit ``kept``'s, in every
    consumer (the removed unit's output is taken to be ``scale`` times the kept one's)."""
    for c in mg.consumers:
        w = _consumer_view(c)
        cols = mg.columns[c.name]
        w[cols[kept]] += scale * w[cols[removed]]


def _channel_slice(module: nn.Module, tensor: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``[units, samples]`` of a consumer's input restricted to the group's channels."""
    axis = 1 if isinstance(module, _ConvNd) else tensor.dim() - 1
    moved = tensor.movedim(axis, 0)
    picked = moved[cols.reshape(-1)].reshape(cols.shape[0], cols.shape[1], -1)
    return picked.reshape(cols.shape[0], -1)


def _record_consumer_inputs(
    mg: MergeGroup, model: nn.Module, run: Callable[[], Any], replace: dict | None = None
) -> list[torch.Tensor]:
    seen: dict[str, list[torch.Tensor]] = {c.name: [] for c in mg.consumers}
    handles = []
    for c in mg.consumers:

        def hook(module, args, name=c.name):
            seen[name].append(_channel_slice(module, args[0], mg.columns[name]).double())

        handles.append(c.module.register_forward_pre_hook(hook))
    for module, value in (replace or {}).items():
        handles.append(module.register_forward_hook(lambda _m, _a, _o, v=value: v))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [torch.cat(seen[c.name], dim=1) for c in mg.consumers]


class _Enough(Exception):
    """Raised by a hook once every watched module has run for the current batch."""


def forward_until(
    model: nn.Module,
    batches: Iterable[Any],
    run: Callable[[nn.Module, Any], Any],
    watched: list[nn.Module],
    *,
    pre: bool = False,
) -> None:
    """Run ``batches``, but stop each forward pass once ``watched`` have all run (as often
    as they did in the first, complete pass): what comes after them is not needed.

    Args:
        pre: the watched modules only need their inputs (stop before they run).
    """
    expected: dict[nn.Module, int] | None = None
    calls: dict[nn.Module, int] = {}

    def count(module, *_):
        calls[module] = calls.get(module, 0) + 1
        if expected is not None and all(calls.get(m, 0) >= n for m, n in expected.items()):
            raise _Enough

    register = "register_forward_pre_hook" if pre else "register_forward_hook"
    handles = [getattr(m, register)(count) for m in watched]
    try:
        for batch in batches:
            calls.clear()
            try:
                run(model, batch)
            except _Enough:
                continue
            if expected is None:
                expected = dict(calls)
    finally:
        for h in handles:
            h.remove()


def activation_vectors(
    mg: MergeGroup, model: nn.Module, batches: Iterable[Any], run: Callable[[nn.Module, Any], Any]
) -> torch.Tensor:
    """Each unit's outputs as its consumers read them, over ``batches``: ``[units, samples]``
    (float64), one block per consumer."""

    consumers = [c.module for c in mg.consumers]
    return _block_normalised(
        _record_consumer_inputs(
            mg, model, lambda: forward_until(model, batches, run, consumers, pre=True)
        )
    )


def homogeneous(mg: MergeGroup, model: nn.Module, inputs: dict[str, torch.Tensor]) -> bool:
    """Whether the path from the units' pre-activations to every consumer is positively
    homogeneous (``f(s z) = s f(z)`` for ``s > 0``), so merging proportional units is exact.

    Measured, not guessed from layer types: the pre-activations (each producer's output, or
    its batch norm's) are replaced by 2x and 0.5x their values and the consumers must read
    exactly 2x and 0.5x what they read before.
    """
    ends = [(norm or producer).module for producer, norm in mg.producers]
    recorded: dict[nn.Module, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, _a, out: recorded.__setitem__(mod, out.detach()))
        for m in ends
    ]
    try:
        base = _record_consumer_inputs(mg, model, lambda: model(**inputs))
    finally:
        for h in handles:
            h.remove()
    for factor in (2.0, 0.5):
        replace = {m: recorded[m] * factor for m in ends if m in recorded}
        scaled = _record_consumer_inputs(mg, model, lambda: model(**inputs), replace)
        for a, b in zip(base, scaled, strict=True):
            if not torch.allclose(b, a * factor, rtol=1e-4, atol=1e-6 * float(a.abs().max())):
                return False
    return True


@torch.no_grad()
def recalibrate_norms(
    norms: list[_BatchNorm],
    model: nn.Module,
    batches: Iterable[Any],
    run: Callable[[nn.Module, Any], Any],
) -> None:
    """Re-estimate the running statistics of ``norms`` on ``batches`` (the rest of the model
    stays in eval mode; no weight changes)."""
    was_training = model.training
    model.eval()
    saved = [(n, n.momentum) for n in norms]
    for n in norms:
        n.reset_running_stats()
        n.momentum = None  # a cumulative average over the batches
        n.train()
    try:
        forward_until(model, batches, run, list(norms))
    finally:
        for n, momentum in saved:
            n.momentum = momentum
            n.eval()
        model.train(was_training)
