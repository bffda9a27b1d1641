"""The ``share`` stage: weight sharing that keeps every tensor dense.

``share: {method: ..., ...}`` picks one of three methods (a discriminated union on
``method``, each with its own options; unknown keys are errors):

* ``merge-neurons``: units of a prunable group whose incoming weights (batch norm folded in)
  or activations are alike up to a positive scale are merged: one is kept, the others'
  outgoing weights are folded into it, scaled, and they are removed through the graph
  engine. Exact for proportional units behind ReLU-like activations, an approximation
  behind GELU/SiLU (the report says which groups are which). ``compressor.stages.share.merge``.
* ``fuse-layers``: the most alike layers of equal type and shape are tied to one shared
  Parameter (trained jointly afterwards, stored once). Reduces size, not latency.
  ``compressor.stages.share.fuse``.
* ``cluster-weights``: each weight tensor is put on a k-entry codebook, which the
  safetensors file stores as small indices. A storage reduction only.
  ``compressor.stages.share.cluster``."""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Discriminator, Tag

from compressor.counting import count_params, model_facts
from compressor.errors import StageError
from compressor.forward import call_model
from compressor.graph import UnitGroup, first_match
from compressor.graph import schedule as sched
from compressor.stages.registry import (
    register_stage,
)
from compressor.stages.share import cluster, fuse, merge
from compressor.stages.share.config import (
    ClusterWeightsConfig,
    FuseLayersConfig,
    MergeNeuronsConfig,
)

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
        found = ctx.data.batches("calibration", cfg.calibration_batches, seed=ctx.stage_seed())
        batches = [b.to(ctx.device) for b in found]
    before = model_facts(model, inputs)
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
            **_ratios(before, model_facts(model, inputs)),
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
