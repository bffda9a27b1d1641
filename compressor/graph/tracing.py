"""Torch-Pruning's dependency graph, with fixes that transformers and CSP models need.

1. Reshapes. Torch-Pruning maps channels through view/reshape only for 2-D/4-D activations
   (flatten of a CNN feature map), and tells those from sequence models by seeing an
   ``nn.Linear`` with a 3-D output. GPT-2 has no ``nn.Linear`` (its projections are
   transformers' ``Conv1D``), so every head-splitting ``view`` would be read as a flatten; a
   ``Conv1D`` with a 3-D output is now the same evidence.
2. Splits along the last axis given as a positive index. Torch-Pruning maps channels
   through a split only along axis 1 or a negative axis (``dim=-1``). GPT-2 splits its packed
   query/key/value projection with ``.split(split_size, dim=2)`` on a (batch, sequence,
   3 * width) tensor: the channel axis, named by its positive index. Left alone, channel ``c``
   of the packed projection would be coupled to channel ``c`` of each of query, key and value,
   and a head removed from the wrong places. :func:`map_last_axis_splits` gives such splits
   the offsets Torch-Pruning gives the ones it understands, matching each consumer to the
   split output it actually reads (from its autograd link), not to the order in which the
   tracer happened to meet it.
3. Splits along axis 1 with one split size (``x.split(c // 2, dim=1)``). Torch-Pruning
   counts one output per *consumer* and matches consumers to outputs in the order it met
   them; in timm's CSPNet the second half feeds both a block and its residual, so it saw
   three outputs of 128 channels of a 256-channel tensor and sent the second half to
   channels 256-383 (``IndexError: index out of range``). The same function remaps these
   and stops Torch-Pruning from redoing them its way before each group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch_pruning as tp
from torch_pruning.dependency.group import Group as _TPGroup
from torch_pruning.dependency.index_mapping import _SplitIndexMapping
from torch_pruning.ops import OPTYPE

from compressor.graph.layers import customized_pruners, is_transposed_linear

# Channel positions one group may hold (summed over its members) before the analysis gives
# up on it. A ViT-B stream group holds about 150,000 (768 channels x ~180 links), a CNN's
# flatten into its classifier (VGG: 512 channels x 7 x 7) about 25,000 per link; window
# attention (torchvision's Swin, MaxViT) multiplies every channel by the window area at each
# reshape, and MaxViT grew past 17 GB of Python index objects. 2,000,000 positions are about
# 0.2 GB: the bound on what one group may cost.
INDEX_BUDGET = 2_000_000


class IndexBudgetExceeded(Exception):
    """A group held more than :data:`INDEX_BUDGET` channel positions."""


@contextlib.contextmanager
def index_budget(dg: DependencyGraph, limit: int = INDEX_BUDGET) -> Iterator[None]:
    """Bound, per group, the channel positions Torch-Pruning collects while building it.

    Torch-Pruning's ``_FlattenIndexMapping`` turns each channel into ``stride`` Python
    objects, and every later link of the group holds its own list; chained through window
    reshapes the lists explode in time and memory, with no error. While this context is
    active, building a group raises :class:`IndexBudgetExceeded` past ``limit`` positions,
    and the layers it reached so far are recorded (``dg._index_seen``: ids of the layers
    whose outputs are in it) so that they are not tried again as roots.
    """
    original_add, original_has = _TPGroup.add_dep, _TPGroup.has_pruning_op

    def counted(group, dep, idxs):
        dg._index_count += len(idxs)
        if dg.is_out_channel_pruning_fn(dep.handler):
            dg._index_seen.add(id(dep.target.module))
        if dg._index_count > limit:
            raise IndexBudgetExceeded(f"{dg._index_count} positions")
        group.__dict__.setdefault("_ops", set()).add((dep.target, dep.handler, tuple(idxs)))
        return original_add(group, dep, idxs)

    def has(group, dep, idxs):
        # Torch-Pruning compares with every op of the group (quadratic: ReXNet's partial
        # residuals kept one group growing for over 5 minutes); the same test, hashed.
        return (dep.target, dep.handler, tuple(idxs)) in group.__dict__.get("_ops", ())

    _TPGroup.add_dep, _TPGroup.has_pruning_op = counted, has
    try:
        yield
    finally:
        _TPGroup.add_dep, _TPGroup.has_pruning_op = original_add, original_has


@dataclass
class FannedOut:
    """A group :func:`get_all_groups` could not build within the budget: its root and the
    ids of the layers it had reached."""

    root: Any
    reached: set[int]


class DependencyGraph(tp.DependencyGraph):
    """``tp.DependencyGraph`` that edits ``Conv1D`` layers and reads GPT-2's graph right."""

    _index_count = 0
    _index_seen: set[int] = set()  # noqa: RUF012  (replaced per group)

    def get_all_groups(self, ignored_layers=(), root_module_types=()):
        """Torch-Pruning's loop over root layers, except that a group whose channels fan out
        past the budget (window attention: torchvision's Swin, MaxViT) is yielded as a
        :class:`FannedOut` instead of ending the analysis, so that the model's other groups
        (its MLP widths) can still be pruned. Its layers are
        not offered as roots again (each would fan out the same way): the layers it had
        reached when it was stopped."""
        visited: set[int] = set()
        ignored = {id(m) for m in [*ignored_layers, *self.IGNORED_LAYERS_IN_TRACING]}
        for module in list(self.module2node.keys()):
            if id(module) in ignored or not isinstance(module, tuple(root_module_types)):
                continue
            pruner = self.get_pruner_of_module(module)
            if pruner is None or pruner.get_out_channels(module) is None:
                continue
            if id(module) in visited:
                continue
            channels = pruner.get_out_channels(module)
            try:
                group = self.get_pruning_group(
                    module, pruner.prune_out_channels, list(range(channels))
                )
            except IndexBudgetExceeded:
                reached = {*self._index_seen, id(module)}
                visited |= reached
                yield FannedOut(module, reached)
                continue
            for dep, _ in group:
                if self.is_out_channel_pruning_fn(dep.handler):
                    visited.add(id(dep.target.module))
            yield group

    def get_pruning_group(self, module, pruning_fn, idxs):
        self._index_count, self._index_seen = 0, set()  # the budget is per group
        refresh_split_offsets(self)  # an earlier removal may have narrowed a split
        return super().get_pruning_group(module, pruning_fn, idxs)

    def build_dependency(self, model, example_inputs, **kwargs):
        pruners = {**customized_pruners(model), **(kwargs.pop("customized_pruners", None) or {})}
        super().build_dependency(model, example_inputs, customized_pruners=pruners, **kwargs)
        map_last_axis_splits(self)
        return self

    def _trace(self, model, example_inputs, forward_fn, output_transform):
        ranks: list[int] = []
        hooks = [
            m.register_forward_hook(lambda _m, _i, out: ranks.append(out.dim()))
            for m in model.modules()
            if is_transposed_linear(m)
        ]
        try:
            module2node = super()._trace(model, example_inputs, forward_fn, output_transform)
        finally:
            for hook in hooks:
                hook.remove()
        if any(rank > 2 for rank in ranks):
            self._2d_4d = False  # what a Linear with a 3-D output tells Torch-Pruning
        return module2node


def _split_sizes(grad_fn: Any, total: int) -> list[int] | None:
    sizes = getattr(grad_fn, "_saved_split_sizes", None)
    if sizes is not None:
        return [int(s) for s in sizes]
    size = getattr(grad_fn, "_saved_split_size", None)
    if size is None or size <= 0:
        return None
    size = int(size)
    return [min(size, total - start) for start in range(0, total, size)]


def _output_number(split_fn: Any, consumer_fn: Any) -> int | None:
    """Which output of the split ``consumer_fn`` reads (autograd records it)."""
    for fn, number in getattr(consumer_fn, "next_functions", ()):
        if fn is split_fn:
            return int(number)
    return None


def map_last_axis_splits(dg: Any) -> int:
    """Give every channel split (axis 1, or the last axis by its positive index) its
    channel offsets and each consumer the output it reads, in place.

    Returns:
        How many split nodes were mapped.
    """
    mapped = 0
    for node in dg.module2node.values():
        if node.type != OPTYPE.SPLIT:
            continue
        fn = node.grad_fn
        shape = getattr(fn, "_saved_self_sym_sizes", None)
        dim = getattr(fn, "_saved_dim", None)
        if shape is None or dim is None or dim not in (1, len(shape) - 1):
            continue  # not a channel split
        if dim == 1 and dim != len(shape) - 1 and not node.enable_index_mapping:
            continue  # Torch-Pruning found it splits tokens, not channels (ViT class token)
        sizes = _split_sizes(fn, int(shape[dim]))
        if not sizes:
            continue
        node.module.split_sizes = sizes
        # Torch-Pruning rebuilds split mappings (its own way) before every group; this flag
        # makes it keep the ones set here.
        node.enable_index_mapping = False
        dg._mapped_splits = [*getattr(dg, "_mapped_splits", []), node]
        _map_split(node)
        mapped += 1
    return mapped


def refresh_split_offsets(dg: Any) -> None:
    """Offsets of the mapped splits from their current sizes (Torch-Pruning's split editor
    narrows ``split_sizes`` when channels go, but leaves the offsets as traced)."""
    for node in getattr(dg, "_mapped_splits", ()):
        _map_split(node)


def _map_split(node: Any) -> None:
    sizes = node.module.split_sizes
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    node.module.offsets = offsets
    for out_node in node.outputs:
        number = _output_number(node.grad_fn, out_node.grad_fn)
        if number is None or number >= len(sizes):
            continue
        span = offsets[number : number + 2]
        for dep in node.dependencies:
            if dep.target is out_node:
                dep.index_mapping[0] = _SplitIndexMapping(offset=span, reverse=False)
        for dep in out_node.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _SplitIndexMapping(offset=span, reverse=True)
