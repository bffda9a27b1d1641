"""The one structural-edit engine: coupled groups of a model and their physical removal.

Built on Torch-Pruning's dependency graph (traced through autograd on the example inputs),
which links every tensor that shares a channel dimension: residual additions, concatenation
(with offsets), flatten into Linear, norms, depthwise and grouped convolutions, chunked GLUs.
This module adds what a compression tool needs on top (one class over one traced graph,
about 480 lines: its methods share the graph's invariants, so it is not split further):

* whole attention heads as units, with ``num_heads``/``all_head_size``-style attributes kept
  true (``compressor.graph.attention``); torch's ``nn.MultiheadAttention`` is first swapped
  for an equivalent :class:`~compressor.rebuildable.HeadPrunedMHA` (its inner width is otherwise
  tied to the hidden size);
* protection: the model's outputs and inputs keep their shapes, the hidden size (embedding
  width / residual stream of a transformer) stays unless ``prune_hidden``, and ``ignore``d
  modules are never touched (a group that would edit one is not prunable);
* a clear error, naming the module and the way out, for a group holding a layer the engine
  has no editor for (custom parameters, LSTMs, grouped transposed convolutions);
* tied parameters stay tied; every edit is recorded as ``{module, dim, kept, size_before}``.

Nothing outside ``compressor.graph`` imports ``torch_pruning``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd
from torch_pruning.ops import OPTYPE

from compressor.errors import StageError
from compressor.graph.attention import (
    AttentionRef,
    block_prefix,
    find_attention,
    swap_multihead_attention,
)
from compressor.graph.groups import (
    CHANNELS,
    CONSUMER,
    FFN,
    HEADS,
    HIDDEN,
    PRODUCER,
    Member,
    UnitGroup,
    channel_count,
    is_depthwise,
    role_of,
)
from compressor.graph.layers import transposed_linear_types
from compressor.graph.stored_widths import StoredWidths
from compressor.graph.support import (
    check_supported,
    flatten_tensors,
    retie,
    tied_parameters,
    unsupported_reason,
)
from compressor.graph.tracing import (
    INDEX_BUDGET,
    DependencyGraph,
    FannedOut,
    index_budget,
)
from compressor.patterns import matches

_ROOT_TYPES = (_ConvNd, nn.Linear, nn.Embedding)


class StructureGraph:
    """The coupled channel groups of ``model`` and the edits that remove units from them.

    Args:
        model: edited in place. Each ``nn.MultiheadAttention`` not ignored is swapped for an
            equivalent :class:`~compressor.rebuildable.HeadPrunedMHA` right away.
        example_inputs: named inputs; the graph is traced by ``model(**example_inputs)``.
        ignore: module names or ``re:`` patterns never to touch (with everything inside them).
        prune_hidden: also offer the hidden size (embedding width, transformer residual
            stream). The model's input and output shapes are protected regardless.

    Attributes:
        history: every edit made through this graph, in order.
        swapped: names of the ``nn.MultiheadAttention`` modules that were replaced.
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
        self.example_inputs = dict(example_inputs)
        self.ignore = tuple(ignore)
        self.prune_hidden = prune_hidden
        self.history: list[dict[str, Any]] = []
        self.swapped = swap_multihead_attention(model, self.is_ignored)
        # Captured before any edit, while the stored counts still agree with the tensors.
        self._stored_widths = StoredWidths(model)
        self._groups: list[UnitGroup] | None = None
        self._trace()

    # ------------------------------------------------------------------ public

    def is_ignored(self, name: str) -> bool:
        return any(matches(p, name) for p in self.ignore)

    def groups(self) -> list[UnitGroup]:
        """Every channel group and head group, blocked ones included (see ``blocked``)."""
        if self._groups is None:
            attention = find_attention(self.model)
            # Channel groups inside a transformer block (same block as an attention) are its
            # MLP width; an attention at the top level makes every module its block.
            prefixes = {(block_prefix(r.name) + ".").lstrip(".") for r in attention.values()}
            roots = (*_ROOT_TYPES, *transposed_linear_types(self.model))
            with index_budget(self._dg, INDEX_BUDGET):
                self._groups = _unique_ids(
                    [
                        self._fanned_out(g)
                        if isinstance(g, FannedOut)
                        else self._describe(g, attention, prefixes)
                        for g in self._dg.get_all_groups(ignored_layers=[], root_module_types=roots)
                    ]
                )
        return list(self._groups)

    def prunable(self) -> list[UnitGroup]:
        """The groups that may lose units (not blocked, more than one unit)."""
        return [g for g in self.groups() if g.blocked is None and g.size > 1]

    def group(self, group_id: str) -> UnitGroup:
        for g in self.groups():
            if g.id == group_id:
                return g
        raise KeyError(group_id)

    def remove(self, group: UnitGroup, units: Iterable[int]) -> list[dict[str, Any]]:
        """Physically remove ``units`` of ``group`` from every tensor coupled to them.

        Returns the edit records (also appended to ``history``), one per module:
        ``{"group", "unit", "module", "dim", "kept", "size_before"}``.

        Raises:
            StageError: the group is blocked, holds a layer the engine cannot edit, or would
                lose every unit.
        """
        units = sorted({int(u) for u in units})
        if not units:
            return []
        if group.blocked:
            raise StageError(f"group {group.id!r} cannot be pruned: {group.blocked}")
        check_supported(group)
        if units[0] < 0 or units[-1] >= group.size:
            raise ValueError(f"units {units} out of range for group {group.id!r} ({group.size})")
        if len(units) >= group.size:
            raise StageError(
                f"pruning would remove every unit of {group.id!r}",
                hint="prune less (a lower amount or target)",
            )
        emptied = [span for span in group.spans if span <= set(units)]
        if emptied:
            reader = next(m.name for m in group.members if _units_read(group, m) == emptied[0])
            raise StageError(
                f"pruning would remove all {len(emptied[0])} units of {group.id!r} that "
                f"{reader} reads, leaving it no channels",
                hint="keep one unit of each such span (the prune stage does)",
            )
        root, root_fn = group.handle
        if channel_count(root, role_of(root, True)) != group.width:
            raise RuntimeError(f"group {group.id!r} is stale: its root was edited since")
        tied = tied_parameters(self.model)
        tp_group = self._dg.get_pruning_group(root, root_fn, group.channels(units))
        if group.attention is not None:
            _cut_head_parameters(tp_group, group.attention)
        records = []
        for item in tp_group:
            module = item.dep.target.module
            name = self._names.get(module) if isinstance(module, nn.Module) else None
            if item.dep.target.type == OPTYPE.PARAMETER:
                records.append(self._parameter_record(group, item))
                continue
            if name is None:
                continue
            role = role_of(module, self._dg.is_out_channel_pruning_fn(item.dep.handler))
            before = channel_count(module, role)
            removed = set(item.idxs)
            records.append(
                {
                    "group": group.id,
                    "unit": group.kind,
                    "module": name,
                    "dim": "in" if role == CONSUMER else "out",
                    "kept": [i for i in range(before) if i not in removed],
                    "size_before": before,
                }
            )
        tp_group.prune(record_history=False)
        self._cut_extra_parameters(records)
        if group.attention is not None:
            group.attention.remove_heads(len(units))
        self._stored_widths.sync()
        retie(tied)
        self.history.extend(records)
        self._groups = None  # widths changed: describe the groups afresh when asked
        return records

    def verify(self) -> None:
        """Run the model on the example inputs and check every output kept its shape.

        Raises:
            StageError: the edited model fails to run, or an output changed shape.
        """
        was_training = self.model.training
        self.model.eval()
        entered: list[str] = []  # modules whose forward is running: the last one failed
        hooks = [
            m.register_forward_pre_hook(lambda _m, _a, n=n: entered.append(n))
            for n, m in self.model.named_modules()
            if n
        ] + [
            m.register_forward_hook(lambda _m, _a, _o: _pop(entered))
            for n, m in self.model.named_modules()
            if n
        ]
        try:
            with torch.no_grad():
                shapes = [
                    tuple(t.shape) for t in flatten_tensors(self.model(**self.example_inputs))
                ]
        except Exception as e:  # any failure here means the edit broke the model
            where = entered[-1] if entered else None
            kind = type(self.model.get_submodule(where)).__name__ if where else ""
            raise StageError(
                "after pruning, the model no longer runs"
                + (f" in {where} ({kind})" if where else "")
                + f" ({type(e).__name__}: {e})",
                hint=(f"{where} " if where else "a layer ")
                + "uses a channel count the engine does not see (a split with stored sizes, "
                "a parameter reshaped to a stored width, a reshape to the input's width); add "
                + (f"ignore: [{where}] " if where else "the modules around it to 'ignore:' ")
                + "to leave its channels alone, and report the model",
            ) from e
        finally:
            for hook in hooks:
                hook.remove()
            self.model.train(was_training)
        if shapes != self._output_shapes:
            raise StageError(
                f"pruning changed the model's output shapes {self._output_shapes} -> {shapes}",
                hint="add the last layers to 'ignore:' and report the model",
            )

    def _cut_extra_parameters(self, records: list[dict[str, Any]]) -> None:
        """Cut a layer's own parameters beyond weight and bias that hold one entry per output
        channel (timm's ``ScaledStdConv2d.gain``, ``(out, 1, 1, 1)``): Torch-Pruning's editors
        know only weight and bias, and the layer then fails to run."""
        for record in records:
            if record["dim"] != "out":
                continue
            module = self.model.get_submodule(record["module"])
            if not isinstance(module, (_ConvNd, nn.Linear)):
                continue
            kept = torch.tensor(record["kept"], dtype=torch.long)
            for attr, param in list(module._parameters.items()):
                if attr in ("weight", "bias") or param is None:
                    continue
                if param.dim() and param.shape[0] == record["size_before"]:
                    cut = param.detach().index_select(0, kept).clone()
                    module._parameters[attr] = nn.Parameter(cut, requires_grad=param.requires_grad)

    def _parameter_record(self, group: UnitGroup, item: Any) -> dict[str, Any]:
        node = item.dep.target
        axis = int(node.pruning_dim)
        before = int(node.module.shape[axis])
        removed = set(item.idxs)
        return {
            "group": group.id,
            "unit": group.kind,
            "module": self._dg._param_to_name.get(node.module, "?"),
            "dim": f"axis{axis}",
            "kept": [i for i in range(before) if i not in removed],
            "size_before": before,
        }

    # ------------------------------------------------------------------ tracing

    def _trace(self) -> None:
        model = self.model
        self._names = {m: n for n, m in model.named_modules()}
        self._order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        # Float inputs become leaves of the autograd graph, so that an op mixing an input into
        # a group (a residual from the input) is seen and the group protected.
        inputs = {
            k: v.detach().clone().requires_grad_(True) if v.is_floating_point() else v
            for k, v in self.example_inputs.items()
        }
        self._input_leaves = [v for v in inputs.values() if v.requires_grad]
        outputs: list[torch.Tensor] = []

        def forward_fn(m, kwargs):
            flat = flatten_tensors(m(**kwargs))
            outputs.extend(flat)
            return [t for t in flat if t.grad_fn is not None]

        was_training = model.training
        frozen = [p for p in model.parameters() if not p.requires_grad]
        caching = _caching_configs(model)
        try:
            for p in frozen:  # tracing follows grad_fn links, which frozen weights lack
                p.requires_grad_(True)
            # A key/value cache concatenates past and new keys along the sequence axis; with
            # nothing cached, the tracer would read that as a channel concatenation.
            for config in caching:
                config.use_cache = False
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._dg = DependencyGraph().build_dependency(
                    model, example_inputs=inputs, forward_fn=forward_fn, verbose=False
                )
        except ZeroDivisionError as e:
            # Torch-Pruning's reshape mapping divides channel counts; a reshape that moves
            # channels across groups (ShuffleNet's channel shuffle: view(b, g, c/g, ...) then
            # transpose) leaves it nothing to divide by. Refuse before any edit.
            raise StageError(
                f"{type(model).__name__} reshapes channels in a way the engine cannot follow "
                f"(a channel shuffle, as in ShuffleNet; tracing failed: {e})",
                hint="structured pruning cannot keep its channels consistent; distil into a "
                "smaller model of the same family instead (e.g. a narrower width multiplier)",
            ) from None
        finally:
            for p in frozen:
                p.requires_grad_(False)
            for config in caching:
                config.use_cache = True
            model.train(was_training)
        self._output_shapes = [tuple(t.shape) for t in outputs]
        self._output_fns = {t.grad_fn for t in outputs if t.grad_fn is not None}

    def _touches_input(self, node: Any) -> bool:
        # An op that combines a model input with other tensors ties the group to the input.
        fns = [f for f, _ in getattr(node.grad_fn, "next_functions", ()) if f is not None]
        if len(fns) < 2:
            return False
        return any(getattr(f, "variable", None) is leaf for f in fns for leaf in self._input_leaves)

    # ------------------------------------------------------------------ describing groups

    def _describe(
        self, tp_group: Any, attention: dict[int, AttentionRef], ffn_prefixes: set[str]
    ) -> UnitGroup:
        root_item = tp_group[0]
        root, root_fn = root_item.dep.target.module, root_item.dep.handler
        width = len(root_item.idxs)
        members: list[Member] = []
        unsupported: list[str] = []
        free_owners: list[str] = []
        param_owners: list[str] = []
        per_head: list[tuple[str, Any, str]] = []  # parameters that may be indexed by head
        axis_reader: str | None = None
        touches: set[str] = set()
        for item in tp_group:
            node = item.dep.target
            out_side = self._dg.is_out_channel_pruning_fn(item.dep.handler)
            if out_side and node.grad_fn in self._output_fns:
                touches.add("output")
            if node.type == OPTYPE.PARAMETER:
                owner = self._dg._param_to_name.get(node.module, "?").rpartition(".")[0]
                param_owners.append(owner)
                if free_parameter_axis(node, len(item.idxs), width) is not None:
                    free_owners.append(owner)  # cut along its channel axis (see remove)
                    continue
                kind = type(self.model.get_submodule(owner)).__name__ if owner else "model"
                unsupported.append(f"{owner or '<model>'} ({kind})")
                per_head.append((owner, node, unsupported[-1]))
                continue
            name = self._names.get(node.module)
            if name is None:  # an operation (add, cat, reshape...), not a module
                if self._touches_input(node):
                    touches.add("input")
                continue
            if any(r is None for r in item.root_idxs):
                touches.add("irregular")
                continue
            count = channel_count(node.module, role_of(node.module, out_side))
            if count is not None and item.idxs and max(item.idxs) >= count:
                # Channels mapped past the layer's width: it reads them along another axis
                # (MLP-Mixer's token-mixing Linear, applied to the transposed stream).
                touches.add("other axis")
                axis_reader = axis_reader or name
            if unsupported_reason(node.module):
                unsupported.append(f"{name} ({type(node.module).__name__})")
            members.append(
                Member(
                    name,
                    node.module,
                    role_of(node.module, out_side),
                    torch.tensor(item.idxs, dtype=torch.long),
                    torch.tensor(item.root_idxs, dtype=torch.long),
                )
            )
        # Named after its first producer in definition order: stable whichever module the
        # tracer happened to reach first.
        producers = sorted(
            (m for m in members if m.role == PRODUCER), key=lambda m: self._order[m.name]
        )
        group_id = producers[0].name if producers else self._names[root]
        if not producers:  # channels nobody computes come from the input (depthwise on x)
            touches.add("input")
        interleave, irregular = self._interleave(root, root_fn, width, members)
        kind, unit_size, ref, blocked = CHANNELS, 1, None, None
        refs = {
            id(attention[id(m.module)]): attention[id(m.module)]
            for m in producers
            if id(m.module) in attention
        }
        if len(refs) > 1:
            blocked = "two attention blocks share this channel group"
        elif refs:
            (ref,) = refs.values()
            kind, unit_size, group_id = HEADS, ref.head_dim, ref.name
            blocked = _head_layout_problem(ref, producers, interleave)
            # A parameter of the attention block with one entry per head (Swin's relative
            # position bias table, (positions, heads)) loses the removed heads' entries.
            for owner, node, label in per_head:
                if owner == ref.name and head_parameter_axis(node, ref) is not None:
                    unsupported.remove(label)
                    free_owners.append(owner)
        # The hidden size: an embedding's width, what attention projections read, or (BEiT,
        # whose qkv is F.linear on the module's weight, not a module call) a channel group
        # reaching an attention block's own parameters (q/v biases, relative-position table).
        attention_names = {r.name for r in attention.values()}
        hidden = (
            any(isinstance(m.module, nn.Embedding) for m in producers)
            or any(id(m.module) in attention for m in members if m.role == CONSUMER)
            or (kind == CHANNELS and any(o in attention_names for o in param_owners))
        )
        tags = (
            frozenset({FFN})
            if kind == CHANNELS and not hidden and any(group_id.startswith(p) for p in ffn_prefixes)
            else frozenset({HIDDEN})
            if hidden
            else frozenset()
        )
        ignored = (
            [m.name for m in members if self.is_ignored(m.name)]
            + [u for u in unsupported if self.is_ignored(u.split(" ")[0])]
            + [o for o in free_owners if o and self.is_ignored(o)]
        )
        if ignored:
            blocked = f"it would edit ignored module {ignored[0]!r}"
        elif "output" in touches:
            blocked = "it sets the width of a model output"
        elif "input" in touches:
            blocked = "it is tied to a model input (e.g. a residual from the input)"
        elif "other axis" in touches and not unsupported:  # else that error says more
            blocked = (
                f"{axis_reader} reads these channels along another axis (a layer applied to "
                "the transposed tensor, as MLP-Mixer's token mixing), so they cannot be cut"
            )
        elif hidden and not self.prune_hidden:
            blocked = "it is the hidden size (set prune_hidden to prune it)"
        elif irregular or "irregular" in touches or width % (interleave * unit_size):
            blocked = blocked or "its channels are coupled in a pattern the engine cannot split"
        extra = (ref.name,) if ref is not None else ()
        group = UnitGroup(
            id=group_id,
            kind=kind,
            width=width,
            interleave=interleave,
            unit_size=unit_size,
            members=members,
            names=(group_id, *extra, *(m.name for m in producers)),
            tags=tags,
            blocked=blocked,
            unsupported=tuple(unsupported),
            attention=ref,
            handle=(root, root_fn),
        )
        group.spans = _partial_spans(group)
        return group

    def _fanned_out(self, fanned: FannedOut) -> UnitGroup:
        """A group whose channels the analysis could not follow in bounded memory: blocked,
        named after its root and the layers it had reached."""
        root = fanned.root
        name = self._names.get(root, "?")
        found = {n for m, n in self._names.items() if id(m) in fanned.reached and n != name}
        others = sorted(found, key=lambda n: self._order.get(n, 0))
        width = channel_count(root, PRODUCER) or 0
        return UnitGroup(
            id=name,
            kind=CHANNELS,
            width=width,
            interleave=1,
            unit_size=1,
            members=[],
            names=(name, *others),
            blocked=(
                f"its channels fan out to over {INDEX_BUDGET:,} positions through reshapes "
                "(window attention, as in Swin and MaxViT, moves them across spatial "
                "windows), which the engine cannot follow in bounded memory"
            ),
            handle=(root, None),
        )

    def _interleave(
        self, root: nn.Module, root_fn: Any, width: int, members: list[Member]
    ) -> tuple[int, bool]:
        """Blocks of the root's channels that must keep equal widths; (count, irregular)."""
        # The root channels that move with channel 0 reveal split/chunk coupling: a chunked
        # GLU drags channel width/2 along, a packed qkv projection channels E and 2E.
        probe = self._dg.get_pruning_group(root, root_fn, [0])
        hits = sorted(
            {
                i
                for item in probe
                if item.dep.target.module is root
                and self._dg.is_out_channel_pruning_fn(item.dep.handler)
                for i in item.idxs
            }
        )
        count = len(hits)
        irregular = width % count != 0 or hits != [k * (width // count) for k in range(count)]
        for m in members:  # grouped convolutions and group norms split channels into blocks
            groups = (
                getattr(m.module, "num_groups", None)
                if isinstance(m.module, nn.GroupNorm)
                else getattr(m.module, "groups", 1)
            )
            if (
                isinstance(m.module, (_ConvNd, nn.GroupNorm))
                and not is_depthwise(m.module)
                and groups > 1
            ):
                irregular |= len(m.index) != width
                count = count * groups // math.gcd(count, groups)
        return count, irregular


def _units_read(group: UnitGroup, member: Member) -> frozenset[int]:
    return frozenset(group.unit_of(member.root).tolist())


def _partial_spans(group: UnitGroup) -> tuple[frozenset[int], ...]:
    """The unit sets of members that read only part of the group (see ``UnitGroup.spans``)."""
    spans = {_units_read(group, m) for m in group.members if len(m.root)}
    return tuple(sorted((s for s in spans if len(s) < group.size), key=min))


def _pop(stack: list[str]) -> None:
    # A forward hook's return value would replace the module's output: return nothing.
    if stack:
        stack.pop()


def _unique_ids(groups: list[UnitGroup]) -> list[UnitGroup]:
    """Give groups that share a name (one producer split into two groups, as CSPNet's
    ``conv_exp`` whose halves feed the cross-stage path and the blocks) the channel span of
    that producer: scores, counts and removals are keyed by group id."""
    seen: dict[str, int] = {}
    for g in groups:
        seen[g.id] = seen.get(g.id, 0) + 1
    for g in groups:
        if seen[g.id] < 2:
            continue
        own = [m.index for m in g.members if m.name == g.id and m.role == PRODUCER]
        if own and len(own[0]):
            lo, hi = int(own[0].min()), int(own[0].max()) + 1
            g.id = f"{g.id}[{lo}:{hi}]"
    ids = [g.id for g in groups]
    for i, g in enumerate(groups):  # still equal (same span): number them
        if ids.count(ids[i]) > 1:
            g.id = f"{ids[i]}#{ids[:i].count(ids[i])}"
    return groups


def free_parameter_axis(node: Any, count: int, width: int) -> int | None:
    """The channel axis of a free parameter (one no layer owns: ConvNeXt's layer scale, a
    class token, a position embedding) when the engine can cut it with its group, else None.

    Torch-Pruning cuts such a parameter along its last axis longer than 1; that is right when
    this axis has exactly the group's channels (a per-channel scale ``(C, 1, 1)``, a token
    ``(1, 1, C)``, a position table ``(1, N, C)``). A parameter whose cut axis has another
    length (a ``(C, D)`` matrix used by matmul, a bias table indexed by head) stays
    unsupported, with the user-facing error. The check is on shapes: a parameter that reaches
    the channels only through a permuting reshape of equal length would be cut as Torch-Pruning
    cuts it, and ``verify`` checks output shapes, not values.
    """
    axis = getattr(node, "pruning_dim", None)
    param = node.module
    if axis is None or not isinstance(param, torch.Tensor) or param.dim() == 0:
        return None
    if int(param.shape[axis]) != width or count > width:
        return None
    return int(axis)


def head_parameter_axis(node: Any, ref: AttentionRef) -> int | None:
    """The head axis of an attention block's own free parameter that has one entry per head
    (Swin's relative-position bias table, ``(positions, heads)``), else None.

    Torch-Pruning reaches it through the attention scores and cuts it at the *channel*
    positions of the removed heads; it needs the head numbers instead (``_cut_head_parameters``).
    """
    axis = getattr(node, "pruning_dim", None)
    param = node.module
    if axis is None or not isinstance(param, torch.Tensor) or param.dim() < 2:
        return None
    return int(axis) if int(param.shape[axis]) == ref.num_heads else None


def _cut_head_parameters(tp_group: Any, ref: AttentionRef) -> None:
    """Give each per-head parameter of ``ref`` the removed heads, not their channels."""
    for k, item in enumerate(tp_group.items):
        node = item.dep.target
        if node.type != OPTYPE.PARAMETER or head_parameter_axis(node, ref) is None:
            continue
        heads = sorted({int(i) // ref.head_dim for i in item.idxs})
        tp_group[k] = item._replace(idxs=heads)


def _caching_configs(model: nn.Module) -> list[Any]:
    """The (Hugging Face) configs in ``model`` that switch a key/value cache on."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    return [c for c in configs.values() if getattr(c, "use_cache", None) is True]


def _head_layout_problem(ref: AttentionRef, producers: list[Member], interleave: int) -> str | None:
    present = {id(m.module) for m in producers}
    if not all(id(p) in present for p in ref.projections):
        return f"attention {ref.name!r}: its query/key/value projections are not coupled"
    if ref.packed and interleave != 3:
        return f"attention {ref.name!r}: packed qkv projection in a layout the engine cannot see"
    if not ref.packed and len({p.out_features for p in ref.projections}) > 1:
        return f"attention {ref.name!r}: grouped-query attention (key/value heads differ)"
    return None
