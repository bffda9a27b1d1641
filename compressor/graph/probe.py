"""Measure what a model would weigh after an edit, without touching it.

Targets such as "keep 30% of the MACs" are met by trying removal counts on throwaway copies:
each try copies the model, removes the units with the engine and counts parameters or MACs
with ``compressor.modeling``. The copies hold ``meta`` tensors (no memory, no arithmetic)
when the model's forward allows it; a forward that needs real values (data-dependent control
flow) makes the probe fall back to real copies.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

from compressor.counting import count_macs, count_params
from compressor.errors import CompressError
from compressor.graph.engine import StructureGraph


def meta_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` whose parameters and buffers live on ``meta``
    (tied parameters stay tied)."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(
            torch.empty_like(p, device="meta"), requires_grad=p.requires_grad
        )
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


class WidthProbe:
    """Counts parameters or MACs of ``model`` after removing units, on copies.

    Args:
        model: the model (never modified).
        example_inputs: named inputs MACs are counted on.
        ignore, prune_hidden: as for :class:`StructureGraph` (the same groups must exist).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Mapping[str, torch.Tensor],
        *,
        ignore: Iterable[str] = (),
        prune_hidden: bool = False,
    ):
        self.model = model
        self.inputs = dict(example_inputs)
        self.ignore = tuple(ignore)
        self.prune_hidden = prune_hidden
        self.use_meta = True
        self.calls = 0

    def measure(self, removals: Mapping[str, int], what: str) -> int:
        """``what`` (``params`` or ``macs``) after removing ``removals[group_id]`` units."""
        self.calls += 1
        if self.use_meta:
            try:
                return self._measure(removals, what, meta=True)
            except CompressError:
                raise
            except Exception:
                self.use_meta = False  # e.g. `if mask.any():` needs real values
        return self._measure(removals, what, meta=False)

    def _measure(self, removals: Mapping[str, int], what: str, *, meta: bool) -> int:
        model = meta_copy(self.model) if meta else copy.deepcopy(self.model)
        inputs = {k: v.to("meta") for k, v in self.inputs.items()} if meta else self.inputs
        graph = StructureGraph(model, inputs, ignore=self.ignore, prune_hidden=self.prune_hidden)
        for group in graph.groups():  # described once: each removal leaves other groups valid
            count = removals.get(group.id, 0)
            if count:
                graph.remove(group, range(count))
        if what == "params":
            return count_params(model)
        return count_macs(model, inputs)


def count_prunable_groups(model: nn.Module, example_inputs: Mapping[str, torch.Tensor]) -> int:
    """How many groups of ``model`` could lose units (``compress inspect``); the model itself
    is not touched (the graph is traced on a copy)."""
    try:
        copy_, inputs = meta_copy(model), {k: v.to("meta") for k, v in example_inputs.items()}
        return len(StructureGraph(copy_, inputs).prunable())
    except CompressError:
        raise
    except Exception:  # a forward that needs real values: trace a real copy instead
        return len(StructureGraph(copy.deepcopy(model), example_inputs).prunable())


def breaking_removals(
    model: nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    removals: Mapping[str, list[int]],
    *,
    ignore: Iterable[str] = (),
    prune_hidden: bool = False,
) -> dict[str, str]:
    """The groups of ``removals`` whose removal makes ``model``'s forward fail, each with the
    error, found on meta copies (shapes only: no memory, no arithmetic); ``model`` is never
    modified.

    A module may use a channel count the engine does not see (a reshape to a stored head
    count, a split by stored sizes, a filter with a stored channel count: LeViT, XCiT,
    PVT-v2, TResNet); removing such a group breaks the model, and without this probe the
    whole stage was refused. Removals are applied in order, the forward checked after each;
    a failing group is recorded and the copy rebuilt with the good ones so far. Returns ``{}``
    when the forward cannot run on meta tensors (data-dependent control flow): the real edit's
    own check still refuses a broken model.
    """
    pending = list(removals.items())
    good: list[tuple[str, list[int]]] = []
    bad: dict[str, str] = {}
    try:
        while pending:
            copy_ = meta_copy(model)
            inputs = {k: v.to("meta") for k, v in example_inputs.items()}
            graph = StructureGraph(copy_, inputs, ignore=ignore, prune_hidden=prune_hidden)
            groups = {g.id: g for g in graph.groups()}
            if not good and not bad:
                try:  # the unedited copy must run on meta, or nothing can be learnt
                    graph.verify()
                except CompressError:
                    return {}
            for group_id, units in good:
                graph.remove(groups[group_id], units)
            rest, pending = pending, []
            for i, (group_id, units) in enumerate(rest):
                graph.remove(groups[group_id], units)
                try:
                    graph.verify()
                except CompressError as e:
                    bad[group_id] = e.message
                    pending = rest[i + 1 :]
                    break
                good.append((group_id, units))
    except CompressError:
        raise
    except Exception:
        return {}
    return bad
