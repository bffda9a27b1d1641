"""Depth pruning: remove whole residual blocks (transformer layers) from their ModuleList.

    stacks = find_block_stacks(model)                  # e.g. model.encoder.layer
    scores = block_influence(model, stacks, batches)   # low = the block changes little
    drop_blocks(model, {"model.encoder.layer": [1]})   # in place; layer_idx, configs follow

A *block stack* is a ``ModuleList``/``Sequential`` of two or more blocks of one type, each with
parameters. A block may go only if it maps its hidden state to a tensor of the same shape
(a residual block), which :func:`block_influence` checks on real inputs.

Importance is block influence (ShortGPT, Men et al. 2024): ``1 - cos(block input, block
output)``, averaged over every position of the calibration batches. A block whose output is
nearly its input adds little beyond the residual and is removed first.

After removal the model must stay consistent: per-block ``layer_idx`` attributes (caches and
masks index by them) are renumbered, a parent's layer count (DistilBERT's ``n_layers``) and
the Hugging Face config's ``num_hidden_layers`` (``n_layer``, ``n_layers`` through the
config's attribute map) follow, and per-layer config lists (``layer_types``: any list-valued
config field whose name mentions ``layer`` and whose length is the layer count) keep the
entries of the kept blocks. The structure manifest records the removal as ``keep_items`` and
the renumbering as ``set_attrs``; :func:`sync_configs` replays the config part from a manifest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import StageError
from compressor.graph.support import flatten_tensors
from compressor.patterns import matches

LAYER_INDEX_ATTRS = ("layer_idx", "layer_id", "layer_index")
PARENT_COUNT_ATTRS = ("n_layers", "num_layers", "num_hidden_layers", "n_layer", "depth")


@dataclass(frozen=True)
class BlockStack:
    """One ``ModuleList``/``Sequential`` of same-type blocks."""

    name: str
    container: nn.Module

    def block_names(self) -> list[str]:
        return [f"{self.name}.{i}" if self.name else str(i) for i in range(len(self.container))]


def find_block_stacks(model: nn.Module, *, min_blocks: int = 2) -> list[BlockStack]:
    """Every outermost ModuleList/Sequential holding ``min_blocks`` or more blocks of one type
    (each with parameters), in definition order."""
    stacks: list[BlockStack] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < min_blocks:
            continue
        if any(name.startswith(s.name + ".") for s in stacks if s.name):
            continue  # inside a block of an outer stack
        children = list(module.children())
        if len({type(c) for c in children}) != 1:
            continue
        if not all(any(True for _ in c.parameters()) for c in children):
            continue
        stacks.append(BlockStack(name, module))
    return stacks


def _hidden_in(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    value = kwargs.get("hidden_states")
    return value if isinstance(value, torch.Tensor) else None


def block_influence(
    model: nn.Module,
    stacks: Iterable[BlockStack],
    batches: Iterable[Mapping[str, torch.Tensor]],
    run: Callable[[nn.Module, Mapping[str, torch.Tensor]], Any] | None = None,
) -> dict[str, float]:
    """``1 - cosine(input, output)`` of every block, averaged over positions and batches.

    Args:
        batches: named model inputs.
        run: ``run(model, inputs)``; default ``model(**inputs)``.

    Returns:
        ``{block name: score}``; a block whose output shape differs from its input's (not a
        residual block) scores ``inf`` and is never chosen.
    """
    run = run or (lambda m, inputs: m(**inputs))
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(name: str):
        def hook(_module, args, kwargs, output):
            hidden = _hidden_in(args, kwargs)
            outs = flatten_tensors(output)
            if hidden is None or not outs or outs[0].shape != hidden.shape:
                sums[name] = float("inf")
                counts[name] = counts.get(name, 0) + 1
                return
            a = hidden.detach().float().reshape(-1, hidden.shape[-1])
            b = outs[0].detach().float().reshape(-1, hidden.shape[-1])
            cos = nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)
            sums[name] = sums.get(name, 0.0) + float((1 - cos).sum())
            counts[name] = counts.get(name, 0) + cos.numel()

        return hook

    for stack in stacks:
        for name, block in zip(stack.block_names(), stack.container, strict=True):
            hooks.append(block.register_forward_hook(hook_for(name), with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                run(model, batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: sums[name] / max(counts[name], 1) for name in sums}


def choose_blocks(
    stacks: list[BlockStack],
    scores: Mapping[str, float],
    count: int,
    *,
    ignore: Iterable[str] = (),
    modules: Iterable[str] = (),
) -> dict[str, list[int]]:
    """The ``count`` lowest-scoring blocks over all stacks, every stack keeping at least one.

    Raises:
        StageError: fewer than ``count`` blocks may be removed.
    """
    ignore, modules = tuple(ignore), tuple(modules)
    pool = []
    for stack in stacks:
        for index, name in enumerate(stack.block_names()):
            allowed = not any(matches(p, name) for p in ignore) and (
                not modules or any(matches(p, name) for p in modules)
            )
            score = scores.get(name, float("inf"))
            if allowed and score != float("inf"):
                pool.append((score, stack.name, index))
    pool.sort()
    chosen: dict[str, list[int]] = {}
    left = {s.name: len(s.container) for s in stacks}
    for _, stack_name, index in pool:
        if sum(len(v) for v in chosen.values()) >= count:
            break
        if left[stack_name] > 1:
            chosen.setdefault(stack_name, []).append(index)
            left[stack_name] -= 1
    removed = sum(len(v) for v in chosen.values())
    if removed < count:
        raise StageError(
            f"depth pruning asked for {count} block(s) but only {removed} may go (each stack "
            "keeps one block; ignored blocks and blocks that change their input's shape stay)",
            hint="lower 'layers', or check 'ignore'/'modules'",
        )
    return {k: sorted(v) for k, v in chosen.items()}


def count_blocks(model: nn.Module) -> int:
    """Blocks in all of the model's stacks.

    Raises:
        StageError: the model has no stack of blocks.
    """
    stacks = find_block_stacks(model)
    if not stacks:
        raise StageError(
            "'layers' asks to remove blocks, but the model has no stack of blocks (a "
            "ModuleList/Sequential of two or more layers of one type)",
            hint="remove 'layers' from the prune stage",
        )
    return sum(len(s.container) for s in stacks)


def blocks_to_remove(layers: int | float, total: int) -> int:
    """A count (int) as it is; a fraction (float) of ``total`` blocks, rounded."""
    return math.floor(layers * total + 0.5) if isinstance(layers, float) else int(layers)


def remove_least_influential(
    model: nn.Module,
    count: int,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    ignore: Iterable[str] = (),
    run: Callable[[nn.Module, Mapping[str, torch.Tensor]], Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every block on ``batches`` and remove the ``count`` least influential.

    Returns:
        The :func:`drop_blocks` records and a report ``{"removed": [block names],
        "influence": {block name: score}}``.
    """
    stacks = find_block_stacks(model)
    scores = block_influence(model, stacks, batches, run=run)
    chosen = choose_blocks(stacks, scores, count, ignore=ignore)
    names = [f"{stack}.{i}" if stack else str(i) for stack, idx in chosen.items() for i in idx]
    records = drop_blocks(model, chosen)
    return records, {"removed": names, "influence": {k: round(v, 6) for k, v in scores.items()}}


def _configs(model: nn.Module) -> list[Any]:
    found = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    return [c for c in found.values() if hasattr(c, "num_hidden_layers")]


def _sync_config(config: Any, before: int, kept: list[int]) -> None:
    if getattr(config, "num_hidden_layers", None) != before:
        return  # this config does not count this stack (e.g. a decoder's own count)
    for key, value in list(vars(config).items()):
        # Per-layer lists (transformers 5 indexes some of them per block, e.g. layer_types).
        if "layer" in key and isinstance(value, list) and len(value) == before:
            setattr(config, key, [value[i] for i in kept])
    config.num_hidden_layers = len(kept)  # the attribute map covers n_layer / n_layers


def drop_blocks(model: nn.Module, removals: Mapping[str, Iterable[int]]) -> list[dict[str, Any]]:
    """Remove blocks from their stacks in place and keep the model consistent.

    Args:
        removals: ``{stack name: block indices to remove}``.

    Returns:
        One record per stack: ``{"module", "kept", "removed", "size_before"}``.

    Raises:
        StageError: a stack would lose every block, or an index is out of range.
    """
    records = []
    for stack_name, indices in removals.items():
        container = model.get_submodule(stack_name) if stack_name else model
        before = len(container)
        gone = sorted({int(i) for i in indices})
        if not gone:
            continue
        if gone[0] < 0 or gone[-1] >= before:
            raise StageError(f"block indices {gone} out of range for {stack_name!r} ({before})")
        if len(gone) >= before:
            raise StageError(f"depth pruning would remove every block of {stack_name!r}")
        kept = [i for i in range(before) if i not in gone]
        for i in reversed(gone):
            del container[i]
        for new, (old, block) in enumerate(zip(kept, container, strict=True)):
            for module in block.modules():
                for attr in LAYER_INDEX_ATTRS:
                    value = getattr(module, attr, None)
                    if type(value) is int and value == old:
                        setattr(module, attr, new)
        parent_name, _, _ = stack_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        for attr in PARENT_COUNT_ATTRS:
            value = getattr(parent, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value == before:
                setattr(parent, attr, len(kept))
        for config in _configs(model):
            _sync_config(config, before, kept)
        records.append({"module": stack_name, "kept": kept, "removed": gone, "size_before": before})
    return records


def sync_configs(model: nn.Module, manifest: Iterable[Mapping[str, Any]]) -> None:
    """Replay the config side of depth pruning on a model rebuilt from a structure manifest:
    for every ``keep_items`` op on a block stack, the Hugging Face config's layer count and
    per-layer lists follow (``compressor.formats.manifest.apply_manifest`` replays only modules)."""
    for op in manifest:
        if op.get("op") != "keep_items" or not op.get("module"):
            continue
        container = model.get_submodule(op["module"])
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            continue
        if len({type(c) for c in container.children()}) != 1:
            continue  # not a stack of blocks
        kept = [int(i) for i in op.get("indices", [])]
        for config in _configs(model):
            before = getattr(config, "num_hidden_layers", None)
            if isinstance(before, int) and kept and max(kept) < before and len(kept) < before:
                _sync_config(config, before, kept)
