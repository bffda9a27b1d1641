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
