"""The ``share`` stage: weight sharing that keeps every tensor dense.

``share: {method: ..., ...}`` picks one of three methods (a discriminated union on
``method``, each with its own options; unknown keys are errors):

* ``merge-neurons``: units of a prunable group whose incoming weights (batch norm folded in)
  or activations are alike up to a positive scale are merged: one is kept, the others'
  outgoing weights are folded into it, scaled, and they are removed through the graph
  engine. Exact for proportional units behind ReLU-like activations, an approximation
  behind GELU/SiLU (the report says which groups are which). ``compressor.sharing.merge``.
* ``fuse-layers``: the most alike layers of equal type and shape are tied to one shared
  Parameter (trained jointly afterwards, stored once). Reduces size, not latency.
  ``compressor.sharing.fuse``.
* ``cluster-weights``: each weight tensor is put on a k-entry codebook, which the
  safetensors file stores as small indices. A storage reduction only.
  ``compressor.sharing.cluster``.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from compressor.errors import StageError
from compressor.graph import UnitGroup, check_amounts, check_pattern, first_match
from compressor.graph import schedule as sched
from compressor.modeling import call_model, count_macs, count_params
from compressor.sharing import cluster, fuse, merge
from compressor.sharing.similarity import MEASURES as LAYER_MEASURES
from compressor.stages.registry import (
    CALIBRATION_DATA,
    EXAMPLE_INPUTS,
    StageConfig,
    register_stage,
)


class _Targeted(StageConfig):
    modules: list[str] = Field(
        default_factory=list, description="Only these modules (names or re: patterns)."
    )
    ignore: list[str] = Field(
        default_factory=list, description="Never touch these modules (names or re:)."
    )

    @field_validator("modules", "ignore")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        return [check_pattern(p) for p in value]


class MergeNeuronsConfig(_Targeted):
    """Merge alike units of each prunable group into one, folding their outgoing weights."""

    method: Literal["merge-neurons"]
    amount: float | None = Field(
        None, ge=0, lt=1, description="Fraction of units removed (merged away) per group."
    )
    amounts: dict[str, float] = Field(
        default_factory=dict, description="Per-pattern fractions; the first match wins."
    )
    threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Merge only pairs at least this similar (with amount/amounts: a cap).",
    )
    similarity: Literal["l2", "cosine"] = Field(
        "l2",
        description="l2: residual after the best positive scale, times the outgoing weight; "
        "cosine: angle only.",
    )
    by: Literal["weights", "activations"] = Field(
        "weights", description="Compare incoming weights, or activations on calibration data."
    )
    recalibrate: Literal["auto"] | bool = Field(
        "auto",
        description="Re-estimate the batch-norm statistics after inexact merges on "
        "calibration data (no training); auto: when the plan has that data.",
    )
    calibration_batches: int = Field(8, ge=1, description="Batches used for activations/norms.")
    round_to: int | None = Field(None, ge=1, description="Keep widths multiples of this.")
    max_amount: float = Field(
        0.9, gt=0, lt=1, description="No group loses more than this fraction of its units."
    )

    @field_validator("amounts")
    @classmethod
    def _amounts(cls, value: dict[str, float]) -> dict[str, float]:
        return check_amounts(value)

    @model_validator(mode="after")
    def _something_to_do(self) -> MergeNeuronsConfig:
        if self.amount is None and not self.amounts and self.threshold is None:
            raise ValueError("say how much to merge: 'amount', 'amounts' or 'threshold'")
        return self

    def requirements(self) -> set[str]:
        needs = {EXAMPLE_INPUTS}
        if self.by == "activations" or self.recalibrate is True:
            needs.add(CALIBRATION_DATA)
        return needs


class FuseLayersConfig(_Targeted):
    """Tie the most alike layers of equal type and shape to one shared parameter."""

    method: Literal["fuse-layers"]
    amount: float | None = Field(
        None, gt=0, le=0.5, description="Fraction of the candidate layers tied to another."
    )
    pairs: int | None = Field(None, ge=1, description="Number of pairs to tie.")
    threshold: float | None = Field(
        None, description="Tie every pair at least this similar (with amount/pairs: a cap)."
    )
    similarity: Literal[LAYER_MEASURES] = Field(  # type: ignore[valid-type]
        "cosine", description="cosine, cka, covariance or wasserstein."
    )
    tie: Literal["mean", "first"] = Field(
        "mean", description="The shared value: the mean of the pair, or the first layer's."
    )
    bias: bool = Field(True, description="Tie the biases too.")
    min_params: int = Field(1024, ge=0, description="Skip layers with fewer weights.")

    @model_validator(mode="after")
    def _something_to_do(self) -> FuseLayersConfig:
        if self.amount is not None and self.pairs is not None:
            raise ValueError("give 'amount' or 'pairs', not both")
        if self.amount is None and self.pairs is None and self.threshold is None:
            raise ValueError("say how much to fuse: 'amount', 'pairs' or 'threshold'")
        return self

    def requirements(self) -> set[str]:
        return set()


class ClusterWeightsConfig(_Targeted):
    """Put each weight tensor on a k-entry codebook (storage only)."""

    method: Literal["cluster-weights"]
    k: int = Field(16, ge=2, le=256, description="Codebook entries per tensor (<=16: 4 bits).")
    tensors: Literal["weights", "all"] = Field(
        "weights", description="Layer weights only, or every float parameter."
    )
    min_numel: int = Field(
        1024, ge=1, description="Skip smaller tensors (the file codebook-encodes >= 1024)."
    )
    iterations: int = Field(30, ge=1, le=1000, description="k-means iterations at most.")

    def requirements(self) -> set[str]:
        return set()


METHODS = {
    "merge-neurons": MergeNeuronsConfig,
    "fuse-layers": FuseLayersConfig,
    "cluster-weights": ClusterWeightsConfig,
}


def _method_of(value: Any) -> str | None:
    method = value.get("method") if isinstance(value, dict) else getattr(value, "method", None)
    return method if method in METHODS else None


ShareConfig = Annotated[
    Annotated[MergeNeuronsConfig, Tag("merge-neurons")]
    | Annotated[FuseLayersConfig, Tag("fuse-layers")]
    | Annotated[ClusterWeightsConfig, Tag("cluster-weights")],
    Discriminator(
        _method_of,
        custom_error_type="invalid_share_method",
        custom_error_message="give 'method': one of " + ", ".join(METHODS),
    ),
]


# ------------------------------------------------------------------ merge-neurons


def _fraction(group: UnitGroup, cfg: MergeNeuronsConfig) -> float:
    pattern = first_match(cfg.amounts, group.names)
    if pattern is not None:
        return cfg.amounts[pattern]
    if cfg.amount is not None:
        return cfg.amount
    return cfg.max_amount if cfg.threshold is not None else 0.0


def _count_for(cfg: MergeNeuronsConfig):
    def count(group: UnitGroup) -> int:
        floor = max(1, group.size - int(cfg.max_amount * group.size))
        step = sched.round_step(group, cfg.round_to)
        fraction = min(_fraction(group, cfg), cfg.max_amount)
        return group.size - sched.kept_units(group.size, fraction, step=step, floor=floor)

    return count


def _facts(model, inputs) -> dict[str, int]:
    return {"params": count_params(model), "macs": count_macs(model, inputs)}


def _ratios(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    return {
        k: {"before": before[k], "after": after[k], "ratio": round(after[k] / max(before[k], 1), 4)}
        for k in before
    }


def _merge(model, cfg: MergeNeuronsConfig, ctx):
    inputs = {k: v.to(ctx.device) for k, v in ctx.example_inputs().items()}
    has_data = ctx.data.has("calibration")
    recalibrate = has_data if cfg.recalibrate == "auto" else cfg.recalibrate
    batches = None
    if cfg.by == "activations" or recalibrate:
        loader = ctx.data.loader("calibration", shuffle=True, seed=ctx.stage_seed())
        batches = [b.to(ctx.device) for b in itertools.islice(loader, cfg.calibration_batches)]
    before = _facts(model, inputs)
    was_training = model.training
    model.eval()
    try:
        result = merge.merge_neurons(
            model,
            inputs,
            count_for=_count_for(cfg),
            threshold=cfg.threshold,
            measure=cfg.similarity,
            by=cfg.by,
            ignore=cfg.ignore,
            include=lambda g: not cfg.modules or first_match(cfg.modules, g.names) is not None,
            round_step=lambda g: sched.round_step(g, cfg.round_to),
            batches=batches,
            run=lambda m, b: call_model(m, b.inputs),
            recalibrate=recalibrate,
        )
    finally:
        model.train(was_training)
    if not result.eligible:
        reasons = "; ".join(f"{g}: {r}" for g, r in result.skipped.items()) or "no group matches"
        raise StageError(
            f"nothing to merge: no group can be merged ({reasons})",
            hint="check 'modules'/'ignore'; compress inspect lists prunable groups",
        )
    stage = ctx.stage_name or "share"
    ctx.history.extend({"stage": stage, **record} for record in result.history)
    notes = result.notes(by=cfg.by)
    if cfg.recalibrate == "auto" and not has_data:
        notes.append("no calibration data: batch-norm statistics were not re-estimated")
    ctx.stage_report.update(
        {
            "method": cfg.method,
            "similarity": cfg.similarity,
            "by": cfg.by,
            **_ratios(before, _facts(model, inputs)),
            "units": {
                g: {"before": d["units_before"], "after": d["units_after"]}
                for g, d in result.groups.items()
            },
            "groups": result.groups,
            "skipped": result.skipped,
            "recalibrated": result.recalibrated,
            "notes": notes,
        }
    )
    for note in notes:
        if not note.startswith("skipped "):
            ctx.log(f"  {note}")
    if result.skipped:
        ctx.log(f"  skipped {len(result.skipped)} group(s): {', '.join(result.skipped)}")
    return model


# ------------------------------------------------------------------ fuse-layers


def _fuse(model, cfg: FuseLayersConfig, ctx):
    buckets = fuse.candidates(
        model, modules=cfg.modules, ignore=cfg.ignore, min_params=cfg.min_params, bias=cfg.bias
    )
    total = sum(len(v) for v in buckets.values())
    if not total:
        raise StageError(
            "nothing to fuse: no two layers of the same type and shape",
            hint="check 'modules'/'ignore'/'min_params'",
        )
    count = cfg.pairs
    if cfg.amount is not None:
        count = max(1, math.floor(cfg.amount * total + 0.5))
    before = count_params(model)
    pairs = fuse.choose_pairs(
        model,
        buckets,
        measure=cfg.similarity,
        count=count,
        threshold=cfg.threshold,
        bias=cfg.bias,
    )
    fuse.tie(model, pairs, mode=cfg.tie, bias=cfg.bias)
    after = count_params(model)
    dtype_bytes = next(model.parameters()).element_size()
    notes = [
        "tying reduces size, not latency: every layer still computes, with the shared weights",
        f"{len(pairs)} pair(s) tied out of {total} candidate layers; "
        f"{before - after:,} parameters are now stored once",
    ]
    if count is not None and len(pairs) < count:
        notes.append(f"asked for {count} pair(s); only {len(pairs)} disjoint pairs qualified")
    ctx.stage_report.update(
        {
            "method": cfg.method,
            "similarity": cfg.similarity,
            "tie": cfg.tie,
            "candidates": total,
            "pairs": [p.__dict__ for p in pairs],
            "params": {"before": before, "after": after, "ratio": round(after / max(before, 1), 4)},
            "bytes_freed": (before - after) * dtype_bytes,
            "notes": notes,
        }
    )
    for pair in pairs:
        ctx.log(f"  tied {pair.tied} -> {pair.kept} ({cfg.similarity} {pair.similarity:.4f})")
    return model


# ------------------------------------------------------------------ cluster-weights

_TRAINING_STAGES = ("finetune", "distill", "prune", "share")


def _cluster(model, cfg: ClusterWeightsConfig, ctx):
    params = cluster.targets(
        model,
        tensors=cfg.tensors,
        modules=cfg.modules,
        ignore=cfg.ignore,
        min_numel=cfg.min_numel,
    )
    if not params:
        raise StageError(
            "nothing to cluster: no tensor matches the stage's settings",
            hint="check 'modules'/'ignore'/'min_numel'",
        )
    done = cluster.cluster_parameters(params, cfg.k, cfg.iterations)
    numel = sum(c.numel for c in done)
    elem = params[0][1].element_size()
    index_bytes = sum((c.numel + 1) // 2 if c.distinct <= 16 else c.numel for c in done)
    notes = [
        "a storage reduction only: the model computes in float with the same shapes, so "
        "latency is unchanged, and ONNX files keep float weights",
    ]
    later = [name for name, _ in ctx.plan.stage_list()[ctx.stage_index + 1 :]]
    if any(name in _TRAINING_STAGES for name in later):
        notes.append(
            f"later stage(s) {', '.join(later)} change the weights and move them off the "
            "codebook, so the file will not shrink: put cluster-weights last"
        )
    ctx.stage_report.update(
        {
            "method": cfg.method,
            "k": cfg.k,
            "tensors": [c.__dict__ for c in done],
            "storage": {
                "clustered_params": numel,
                "float_bytes": numel * elem,
                "codebook_bytes": index_bytes + sum(c.distinct * elem for c in done),
            },
            "notes": notes,
        }
    )
    for note in notes[1:]:
        ctx.log(f"  [yellow]warning:[/] {note}")
    return model


@register_stage(
    "share",
    ShareConfig,  # type: ignore[arg-type]  (a discriminated union of the method configs)
    "Weight sharing that keeps tensors dense: merge-neurons, fuse-layers, cluster-weights.",
)
def apply(model, cfg, ctx):
    methods = {"merge-neurons": _merge, "fuse-layers": _fuse, "cluster-weights": _cluster}
    with torch.no_grad():
        return methods[cfg.method](model, cfg, ctx)
