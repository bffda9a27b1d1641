"""merge-neurons: remove units by folding each into a similar kept unit, not by dropping it.

For every eligible group (``compressor.stages.share.units``), in forward order so that a group sees
the folds made upstream: describe each unit by a vector (its incoming weights with batch norm
folded in, or its activations on calibration data), merge greedily, fold, remove.

The greedy step takes the cheapest ``removed -> kept`` pair among the units still there. With
``v`` the unit vectors and ``o`` the outgoing columns, the scale is the least-squares one,
``s = <v_j, v_i> / |v_i|^2`` (never negative when merging by weights: a negative multiple
does not survive a ReLU), and the cost of a pair is

* ``l2``: ``|v_j - s v_i| * |o_j|``, the size of what the consumers stop seeing: the part of
  unit ``j`` that ``i`` cannot stand in for, times how much the consumers read ``j``;
* ``cosine``: ``1 - cos(v_j, v_i)``, direction only.

With ``s = 0`` a merge is a plain removal, so a unit without any partner is simply pruned:
merging never has fewer options than pruning. The kept unit's vector does not change (only
its outgoing columns do: ``o_i += s o_j``), so later merges into it stay consistent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from compressor.graph import StructureGraph, UnitGroup
from compressor.stages.share.units import (
    activation_vectors,
    eligible,
    fold,
    homogeneous,
    norm_parents,
    outgoing_matrix,
    recalibrate_norms,
    weight_vectors,
)

MEASURES = ("l2", "cosine")


@dataclass(frozen=True)
class Merge:
    """Unit ``removed`` is folded into unit ``kept`` with ``scale``; ``similarity`` in [0, 1]
    for l2 (1 - relative residual) and [-1, 1] for cosine."""

    removed: int
    kept: int
    scale: float
    similarity: float


def _pair_stats(vectors: torch.Tensor, positive: bool):
    gram = vectors @ vectors.T
    sq = gram.diagonal().clone()
    scale = gram / sq.clamp_min(1e-300)[None, :]
    scale[:, sq <= 0] = 0.0
    if positive:
        scale = scale.clamp_min(0.0)
    residual = (sq[:, None] - 2 * scale * gram + scale.pow(2) * sq[None, :]).clamp_min(0).sqrt()
    norms = sq.sqrt()
    cosine = gram / (norms[:, None] * norms[None, :]).clamp_min(1e-300)
    relative = 1 - residual / norms[:, None].clamp_min(1e-300)
    return scale, residual, cosine, relative


def plan_merges(
    vectors: torch.Tensor,
    outgoing: torch.Tensor,
    *,
    count: int,
    threshold: float | None = None,
    measure: str = "l2",
    positive: bool = True,
) -> list[Merge]:
    """Greedily choose up to ``count`` merges (fewer when ``threshold`` stops it earlier).

    Args:
        vectors: ``[units, D]`` what makes units alike (incoming weights or activations).
        outgoing: ``[units, M]`` the units' outgoing columns (not modified).
        count: the most units removed.
        threshold: stop when the best pair's similarity falls below this.
        measure: ``l2`` or ``cosine`` (see the module docstring).
        positive: only non-negative scales (weights through a ReLU-like activation).

    Returns:
        The merges in the order they must be folded.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown similarity {measure!r}; expected one of {MEASURES}")
    v = vectors.detach().double().cpu()  # [units, units] bookkeeping: small, on the CPU
    n = v.shape[0]
    scale, residual, cosine, relative = _pair_stats(v, positive)
    similarity = cosine if measure == "cosine" else relative
    out = outgoing.detach().double().cpu().clone()
    out_norm = out.norm(dim=1)

    def costs(rows: torch.Tensor | slice) -> torch.Tensor:
        if measure == "cosine":
            return 1 - cosine[rows]
        return residual[rows] * out_norm[rows, None]

    cost = costs(slice(None)).clone()
    cost.fill_diagonal_(float("inf"))
    alive = torch.ones(n, dtype=torch.bool)
    merges: list[Merge] = []
    for _ in range(min(count, n - 1)):
        flat = int(torch.argmin(cost))
        j, i = divmod(flat, n)
        if not torch.isfinite(cost[j, i]):
            break
        if threshold is not None and float(similarity[j, i]) < threshold:
            break
        s = float(scale[j, i])
        merges.append(Merge(j, i, s, float(similarity[j, i])))
        out[i] += s * out[j]
        out_norm[i] = out[i].norm()
        alive[j] = False
        cost[j, :] = float("inf")
        cost[:, j] = float("inf")
        row = costs(i).clone()
        row[~alive] = float("inf")
        row[i] = float("inf")
        cost[i] = row
    return merges


@dataclass
class MergeResult:
    """What merging did: per group, removed units, merges and exactness; skipped groups."""

    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    recalibrated: list[str] = field(default_factory=list)
    eligible: list[str] = field(default_factory=list)  # groups that could be merged

    def notes(self, *, by: str = "weights") -> list[str]:
        """What the report must say: which merges are exact, which approximate, and why
        groups were skipped."""
        notes = []
        relu_like = [g for g, d in self.groups.items() if d["homogeneous"]]
        other = [g for g, d in self.groups.items() if not d["homogeneous"]]
        if by == "activations":
            notes.append(
                "units were matched by their activations on calibration data and folded "
                "with least-squares scales: every merge is an approximation"
            )
        if relu_like:
            notes.append(
                f"{', '.join(relu_like)}: positively homogeneous path (ReLU-like): merging "
                "exactly proportional units is exact there; less alike units merge "
                "approximately (see each group's similarity)"
            )
        if other:
            notes.append(
                f"{', '.join(other)}: the activation is not positively homogeneous (e.g. "
                "GELU, SiLU), so merges there are approximations unless the units are "
                "duplicates (by: activations fits them on calibration data)"
            )
        if self.recalibrated:
            notes.append(
                f"re-estimated the running statistics of {len(self.recalibrated)} batch "
                "norm(s) on calibration data after inexact merges (no weights trained)"
            )
        notes.extend(f"skipped {gid}: {reason}" for gid, reason in self.skipped.items())
        return notes


def merge_neurons(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    *,
    count_for: Callable[[UnitGroup], int],
    threshold: float | None = None,
    measure: str = "l2",
    by: str = "weights",
    ignore: Iterable[str] = (),
    include: Callable[[UnitGroup], bool] = lambda g: True,
    round_step: Callable[[UnitGroup], int] = lambda g: 1,
    batches: list[Any] | None = None,
    run: Callable[[nn.Module, Any], Any] | None = None,
    recalibrate: bool = False,
) -> MergeResult:
    """Merge units in every eligible group of ``model`` (edited in place, eval mode).

    Args:
        inputs: example inputs (tracing, and the exactness probe).
        count_for: the most units a group loses (with ``threshold``: the cap).
        threshold: merge only pairs at least this similar (see :class:`Merge`).
        measure: ``l2`` or ``cosine``.
        by: ``weights`` (data-free) or ``activations`` (the consumers' inputs on ``batches``).
        ignore: modules never touched.
        include: which groups to consider (per-module targeting).
        round_step: kept unit counts must be multiples of this (threshold mode rounds down
            the number of merges; amount mode gets counts already rounded).
        batches, run: calibration batches and ``run(model, batch)``.
        recalibrate: after a group's inexact merges, re-estimate the running statistics of
            the batch norms its consumers feed, on ``batches`` (no weight is trained): their
            inputs changed, and stale statistics shift every later layer.

    Returns:
        Per-group details, the skipped groups with reasons, and the engine's edit records.
    """
    if (by == "activations" or recalibrate) and (batches is None or run is None):
        raise ValueError("merging by activations or recalibrating needs batches and run")
    result = MergeResult()
    graph = StructureGraph(model, inputs, ignore=ignore)
    parents = norm_parents(model, inputs)
    followers = {producer: norm for norm, producer in parents.items()}
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    # Forward order: a group's vectors then include the folds made upstream.
    ids = sorted((g.id for g in graph.groups()), key=lambda gid: order.get(gid, len(order)))
    for gid in ids:
        group = graph.group(gid)
        if not include(group):
            continue
        prepared = eligible(group, parents)
        if isinstance(prepared, str):
            result.skipped[gid] = prepared
            continue
        result.eligible.append(gid)
        cap = min(count_for(group), group.size - 1)
        if cap <= 0:
            continue
        if by == "activations":
            vectors, positive = activation_vectors(prepared, model, batches, run), False
        else:
            vectors, positive = weight_vectors(prepared), True
        merges = plan_merges(
            vectors,
            outgoing_matrix(prepared),
            count=cap,
            threshold=threshold,
            measure=measure,
            positive=positive,
        )
        step = round_step(group)
        if threshold is not None and step > 1:
            # Fewer merges until the kept width is a multiple of the step (a prefix of a
            # greedy plan is itself a valid plan).
            kept = group.size - len(merges)
            merges = merges[: max(0, group.size - step * -(-kept // step))]
        if not merges:
            continue
        path_homogeneous = homogeneous(prepared, model, inputs)
        for m in merges:
            fold(prepared, m.removed, m.kept, m.scale)
        graph.remove(group, [m.removed for m in merges])
        exact = path_homogeneous and all(m.similarity >= 1 - 1e-6 for m in merges)
        norms = [followers[c.module] for c in prepared.consumers if c.module in followers]
        if recalibrate and norms and not exact:
            recalibrate_norms(norms, model, batches, run)
            result.recalibrated.extend(_name_of(model, n) for n in norms)
        result.groups[gid] = _describe(group, merges, path_homogeneous, exact)
    graph.verify()
    result.history = list(graph.history)
    return result


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _describe(
    group: UnitGroup, merges: list[Merge], path_homogeneous: bool, exact: bool
) -> dict[str, Any]:
    folded = [m for m in merges if m.scale != 0.0]
    sims = [m.similarity for m in merges]
    return {
        "units_before": group.size,
        "units_after": group.size - len(merges),
        "merged": len(folded),
        "dropped": len(merges) - len(folded),  # no partner worth folding into: plain removal
        "similarity": {"min": round(min(sims), 4), "mean": round(sum(sims) / len(sims), 4)},
        "homogeneous": path_homogeneous,
        "exact": exact,
    }
