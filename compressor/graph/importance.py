"""Importance criteria: how much each unit of a group matters (higher = keep).

Criteria only read the model (weights, gradients, activations); choosing how many units go
is ``compressor.graph.schedule`` and removing them is ``compressor.graph``.

Every member of a group (producer rows, consumer columns, norm scales) contributes a score
per unit; each member's scores are divided by their mean before the members are averaged,
so a wide consumer does not drown a narrow producer, and scores of different groups are
comparable (mean 1) for global ranking.

* ``l1`` / ``l2``: norm of the unit's weights in every member.
* ``taylor``: first-order Taylor estimate of the loss change, sum of ``|w * dL/dw|`` over the
  unit's weights, with gradients of the task loss accumulated over a few training batches.
* ``activation``: mean absolute output of the unit (producers and norms) on calibration data.
* ``bn-scale``: ``|gamma|`` of the batch norms in the group (network slimming); groups
  without batch norm fall back to ``l1``.
* ``random``: seeded uniform scores, a baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from compressor.errors import StageError
from compressor.graph import CONSUMER, Member, UnitGroup

CRITERIA = ("l1", "l2", "taylor", "activation", "bn-scale", "random")


def _unit_sum(group: UnitGroup, member: Member, values: torch.Tensor) -> torch.Tensor:
    """Sum per-entry values of a member into the group's units."""
    units = group.unit_of(member.root).to(values.device)
    out = torch.zeros(group.size, dtype=torch.float64, device=values.device)
    return out.index_add_(0, units, values.double()).cpu()


def _combine(per_member: list[torch.Tensor], size: int) -> torch.Tensor:
    """Average of the members' scores, each scaled to mean 1 (all-zero members are dropped)."""
    scaled = [s / s.mean() for s in per_member if s.numel() and float(s.mean()) > 0]
    if not scaled:
        return torch.ones(size, dtype=torch.float64)
    return torch.stack(scaled).mean(0)


def magnitude(group: UnitGroup, p: int = 2) -> torch.Tensor:
    """L1 (``p=1``) or L2 (``p=2``) norm of each unit's weights, over every member."""
    per_member = []
    for member in group.members:
        entries = member.entries("weight")
        if entries is None:
            continue
        entries = entries.detach().float()
        values = entries.abs().sum(1) if p == 1 else entries.pow(2).sum(1)
        units = _unit_sum(group, member, values)
        per_member.append(units if p == 1 else units.sqrt())
    return _combine(per_member, group.size)


def taylor(group: UnitGroup) -> torch.Tensor:
    """First-order Taylor importance from the gradients already in ``.grad``."""
    per_member = []
    for member in group.members:
        values = None
        for attr in ("weight", "bias"):
            param = getattr(member.module, attr, None)
            if not isinstance(param, nn.Parameter) or param.grad is None:
                continue
            w = member.entries(attr)
            g = member.entries(attr, tensor=param.grad)
            if w is None or g is None:
                continue
            contribution = (w.detach() * g).abs().sum(1)
            values = contribution if values is None else values + contribution
        if values is not None:
            per_member.append(_unit_sum(group, member, values))
    return _combine(per_member, group.size)


def bn_scale(group: UnitGroup) -> torch.Tensor | None:
    """``|gamma|`` of the group's batch norms per unit; None when the group has none."""
    per_member = []
    for member in group.members:
        if isinstance(member.module, _BatchNorm) and member.module.affine:
            gamma = member.entries("weight").detach().abs().sum(1)
            per_member.append(_unit_sum(group, member, gamma))
    return _combine(per_member, group.size) if per_member else None


def random_scores(group: UnitGroup, generator: torch.Generator) -> torch.Tensor:
    """Uniform random scores (the baseline every criterion should beat)."""
    return torch.rand(group.size, generator=generator, dtype=torch.float64)


def accumulate_gradients(
    model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor]
) -> int:
    """Sum the loss gradients of ``batches`` into the parameters' ``.grad`` (eval mode, so
    batch-norm statistics do not move). Returns the number of batches used."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    count = 0
    try:
        with torch.enable_grad():
            for batch in batches:
                loss_fn(model, batch).backward()
                count += 1
    finally:
        model.train(was_training)
    return count


def _channel_axis(module: nn.Module, output: torch.Tensor) -> int:
    # Convolutions and batch/group/instance norms put channels first after the batch.
    channels_first = isinstance(
        module, (_ConvNd, _BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
    )
    return 1 if channels_first and output.dim() > 1 else output.dim() - 1


@torch.no_grad()
def activation(
    groups: list[UnitGroup],
    model: nn.Module,
    batches: Iterable[Any],
    run: Callable[[nn.Module, Any], Any],
) -> dict[str, torch.Tensor]:
    """Mean ``|output|`` of each unit's producers and norms over ``batches``."""
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}

    def hook(module, _inputs, output):
        if isinstance(output, tuple):
            output = output[0]
        axis = _channel_axis(module, output)
        flat = output.detach().abs().float().movedim(axis, 0).reshape(output.shape[axis], -1)
        key = id(module)
        sums[key] = sums.get(key, 0) + flat.sum(1)
        counts[key] = counts.get(key, 0) + flat.shape[1]

    watched = {id(m.module): m.module for g in groups for m in g.members if m.role != CONSUMER}
    handles = [m.register_forward_hook(hook) for m in watched.values()]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            run(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    scores = {}
    for group in groups:
        per_member = []
        for member in group.members:
            key = id(member.module)
            if member.role == CONSUMER or key not in sums:
                continue
            mean = (sums[key] / counts[key]).cpu()
            per_member.append(_unit_sum(group, member, mean[member.index]))
        scores[group.id] = _combine(per_member, group.size)
    return scores


def score_groups(
    criterion: str,
    groups: list[UnitGroup],
    *,
    model: nn.Module | None = None,
    batches: Iterable[Any] | None = None,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    run: Callable[[nn.Module, Any], Any] | None = None,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Scores per unit for each group, by ``criterion``; also notes for the report.

    Args:
        criterion: one of :data:`CRITERIA`.
        groups: the groups to score (from one :class:`~compressor.graph.StructureGraph`).
        model: the model (taylor, activation).
        batches: training batches with labels (taylor) or calibration batches (activation).
        loss_fn: ``(model, batch) -> loss`` (taylor).
        run: ``(model, batch) -> output`` (activation).
        seed: seeds ``random``.

    Raises:
        StageError: a data criterion got no data.
    """
    notes: list[str] = []
    if criterion in ("l1", "l2"):
        p = 1 if criterion == "l1" else 2
        return {g.id: magnitude(g, p) for g in groups}, notes
    if criterion == "random":
        generator = torch.Generator().manual_seed(seed)
        return {g.id: random_scores(g, generator) for g in groups}, notes
    if criterion == "bn-scale":
        scores = {}
        for g in groups:
            s = bn_scale(g)
            if s is None:
                notes.append(f"{g.id}: no batch norm in the group, scored by l1 instead")
                s = magnitude(g, 1)
            scores[g.id] = s
        return scores, notes
    if criterion == "taylor":
        if model is None or batches is None or loss_fn is None:
            raise StageError(
                "the taylor criterion needs labelled training data",
                hint="set data.train, or use criterion: l2",
            )
        if accumulate_gradients(model, batches, loss_fn) == 0:
            raise StageError(
                "the taylor criterion got no training batches", hint="check data.train"
            )
        try:
            return {g.id: taylor(g) for g in groups}, notes
        finally:
            model.zero_grad(set_to_none=True)
    if criterion == "activation":
        if model is None or batches is None or run is None:
            raise StageError(
                "the activation criterion needs calibration data",
                hint="set data.calibration (or data.train), or use criterion: l2",
            )
        return activation(groups, model, batches, run), notes
    raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
