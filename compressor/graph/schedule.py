"""How many units each group loses: per-layer or global ranking, ``round_to``, floors, and the
search for the pruning ratio that meets a parameter/MAC target.

Pure functions of group sizes and scores; removing the chosen units is the engine's job.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from compressor.errors import StageError
from compressor.graph.groups import HEADS, UnitGroup

Counts = dict[str, int]  # group id -> units to remove


def round_step(group: UnitGroup, round_to: int | None) -> int:
    """Kept unit counts must be multiples of this for the width to be a multiple of
    ``round_to`` (heads are whole already and are not rounded)."""
    if not round_to or group.kind == HEADS:
        return 1
    return round_to // math.gcd(round_to, group.unit_width)


def kept_units(size: int, fraction: float, *, step: int = 1, floor: int = 1) -> int:
    """Units kept when ``fraction`` of ``size`` goes: nearest count, rounded to a multiple of
    ``step`` (when the group is big enough), never below ``floor`` nor above ``size``."""
    if fraction <= 0:
        return size
    kept = size - math.floor(fraction * size + 0.5)
    if step > 1 and size >= step:
        kept = step * math.floor(kept / step + 0.5)
        floor = min(step * math.ceil(floor / step), step * (size // step))
    return max(min(kept, size), floor, 1)


def per_layer_counts(
    groups: list[UnitGroup], fraction: float, steps: dict[str, int], floors: dict[str, int]
) -> Counts:
    """Each group loses ``fraction`` of its units."""
    return {
        g.id: g.size
        - kept_units(g.size, fraction, step=steps.get(g.id, 1), floor=floors.get(g.id, 1))
        for g in groups
    }


def global_counts(
    groups: list[UnitGroup],
    scores: dict[str, torch.Tensor],
    fraction: float,
    steps: dict[str, int],
    floors: dict[str, int],
) -> Counts:
    """``fraction`` of all units go, the lowest-scoring first across groups (each group's
    scores scaled to mean 1), then each group's count is rounded like a per-layer one."""
    total = sum(g.size for g in groups)
    budget = math.floor(fraction * total + 0.5)
    pool = []
    for g in groups:
        s = scores[g.id].double()
        s = s / s.mean() if float(s.mean()) > 0 else torch.ones_like(s)
        pool.extend((float(v), g.id, u) for u, v in enumerate(s))
    pool.sort()
    removed = {g.id: 0 for g in groups}
    room = {g.id: g.size - max(floors.get(g.id, 1), 1) for g in groups}
    for _, gid, _ in pool:
        if budget <= 0:
            break
        if removed[gid] < room[gid]:
            removed[gid] += 1
            budget -= 1
    return {
        g.id: g.size
        - kept_units(
            g.size, removed[g.id] / g.size, step=steps.get(g.id, 1), floor=floors.get(g.id, 1)
        )
        for g in groups
    }


def lowest(scores: torch.Tensor, count: int, spans: tuple[frozenset[int], ...] = ()) -> list[int]:
    """The ``count`` units with the lowest scores (ties: lower index first), skipping any unit
    that would be the last one left of a span (``UnitGroup.spans``: a layer reading only those
    units would lose all its channels). Fewer than ``count`` only if the spans allow no more."""
    order = torch.argsort(scores, stable=True).tolist()
    if not spans:
        return sorted(order[:count])
    left = [len(span) for span in spans]
    member_of: dict[int, list[int]] = {}
    for i, span in enumerate(spans):
        for unit in span:
            member_of.setdefault(unit, []).append(i)
    chosen = []
    for unit in order:
        if len(chosen) == count:
            break
        if any(left[i] == 1 for i in member_of.get(unit, ())):
            continue
        chosen.append(unit)
        for i in member_of.get(unit, ()):
            left[i] -= 1
    return sorted(chosen)


def search_fraction(
    counts_for: Callable[[float], Counts],
    measure: Callable[[Counts], int],
    goal: int,
    *,
    what: str,
    iterations: int = 18,
) -> tuple[float, Counts, int]:
    """The smallest pruning fraction whose model measures at most ``goal`` (bisection).

    ``measure`` must fall as the fraction grows (it does: counts only grow with it).

    Returns:
        ``(fraction, counts, measured value)``.

    Raises:
        StageError: even the largest fraction allowed does not reach the goal.
    """
    cache: dict[tuple, int] = {}

    def value(counts: Counts) -> int:
        key = tuple(sorted(counts.items()))
        if key not in cache:
            cache[key] = measure(counts)
        return cache[key]

    lo, hi = 0.0, 1.0
    best = counts_for(hi)
    if value(best) > goal:
        raise StageError(
            f"the {what} target cannot be met: pruning every prunable group as far as allowed "
            f"leaves {value(best):,} {what} (target {goal:,})",
            hint="lower the target, raise max_amount, prune more groups (fewer 'ignore', "
            "prune_hidden: true), or add a stage that removes other parts",
        )
    start = counts_for(lo)
    if value(start) <= goal:
        return lo, start, value(start)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        counts = counts_for(mid)
        if value(counts) <= goal:
            hi, best = mid, counts
        else:
            lo = mid
    return hi, best, value(best)
