"""fuse-layers: tie alike layers of the same type and shape to one shared parameter.

Candidates are Linear and convolution layers (not ignored, not already sharing a weight)
grouped by type and weight shape (and bias shape when biases are tied too). Every pair in a
group is scored (``compressor.stages.share.similarity``); the most similar disjoint pairs are tied,
the earlier layer of each pair (in definition order) keeping its name as the stored key.

Tying is plain module attribute assignment (``b.weight = a.weight``), so ``parameters()``
yields the shared tensor once: fine-tuning and distillation train it jointly, the safetensors
writer stores it once with an alias (``compressor.artifacts``), and ``load`` ties it again.
Every layer still computes, so tying reduces size, not latency.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

from compressor.graph import matches
from compressor.stages.share.similarity import similarity

FUSABLE = (nn.Linear, _ConvNd)


@dataclass(frozen=True)
class Pair:
    """Layer ``tied`` now uses layer ``kept``'s parameters; ``params`` were freed."""

    kept: str
    tied: str
    similarity: float
    params: int


def _shared_ids(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, count in seen.items() if count > 1}


def candidates(
    model: nn.Module,
    *,
    modules: Iterable[str] = (),
    ignore: Iterable[str] = (),
    min_params: int = 0,
    bias: bool = True,
) -> dict[tuple, list[str]]:
    """Layers that could be tied, grouped by ``(type, weight shape, bias shape)``."""
    modules, ignore = list(modules), list(ignore)
    shared = _shared_ids(model)
    buckets: dict[tuple, list[str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, FUSABLE) or not isinstance(module.weight, nn.Parameter):
            continue
        if modules and not any(matches(p, name) for p in modules):
            continue
        if any(matches(p, name) for p in ignore) or id(module.weight) in shared:
            continue
        if module.weight.numel() < min_params:
            continue
        b = module.bias if bias else None
        key = (type(module).__name__, tuple(module.weight.shape), None if b is None else b.shape)
        buckets.setdefault(key, []).append(name)
    return {k: v for k, v in buckets.items() if len(v) > 1}


def choose_pairs(
    model: nn.Module,
    buckets: dict[tuple, list[str]],
    *,
    measure: str,
    count: int | None = None,
    threshold: float | None = None,
    bias: bool = True,
) -> list[Pair]:
    """The most similar disjoint pairs: at most ``count``, none below ``threshold``
    (``bias``: the biases will be tied too, which counts in the parameters freed)."""
    scored = []
    for names in buckets.values():
        for a, b in itertools.combinations(names, 2):
            wa, wb = model.get_submodule(a).weight, model.get_submodule(b).weight
            scored.append((similarity(measure, wa, wb), a, b))
    scored.sort(key=lambda s: -s[0])
    used: set[str] = set()
    pairs: list[Pair] = []
    for score, a, b in scored:
        if count is not None and len(pairs) >= count:
            break
        if threshold is not None and score < threshold:
            break
        if a in used or b in used:
            continue
        used |= {a, b}
        kept, tied = model.get_submodule(a), model.get_submodule(b)
        both = bias and _has_bias(kept) and _has_bias(tied)
        freed = tied.weight.numel() + (tied.bias.numel() if both else 0)
        pairs.append(Pair(a, b, round(score, 6), freed))
    return pairs


def _has_bias(module: nn.Module) -> bool:
    return isinstance(getattr(module, "bias", None), nn.Parameter)


@torch.no_grad()
def tie(model: nn.Module, pairs: list[Pair], *, mode: str = "mean", bias: bool = True) -> None:
    """Make each pair's layers share one Parameter (the mean of the two, or the first's)."""
    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
        (lambda x, y: (x + y) / 2) if mode == "mean" else (lambda x, _y: x)
    )
    for pair in pairs:
        kept, tied = model.get_submodule(pair.kept), model.get_submodule(pair.tied)
        attrs = ["weight"] + (["bias"] if bias and _has_bias(kept) and _has_bias(tied) else [])
        for attr in attrs:
            a, b = getattr(kept, attr), getattr(tied, attr)
            shared = nn.Parameter(combine(a.data, b.data).clone(), requires_grad=a.requires_grad)
            setattr(kept, attr, shared)
            setattr(tied, attr, shared)
