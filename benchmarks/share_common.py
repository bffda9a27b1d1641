"""Shared by the share_* benchmarks: a RunContext on a sample model, stage runners, sizes."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn as nn
from pydantic import TypeAdapter

from compressor.forward import call_model
from compressor.run.context import RunContext, context_for_plan
from compressor.stages import finetune, prune, share
from compressor.stages.registry import get_stage

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
SHARE = TypeAdapter(get_stage("share").config)


def context(name: str, seed: int = 0) -> tuple[RunContext, nn.Module]:
    """The sample model ``name`` with its shipped plan's data and metric."""
    return context_for_plan(SAMPLES / name / "plan.yaml", [f"seed={seed}"])


def run_share(ctx: RunContext, model: nn.Module, **options) -> dict:
    ctx.stage_index, ctx.stage_name, ctx.stage_report = 0, "share", {}
    share.apply(model, SHARE.validate_python(options), ctx)
    return ctx.stage_report


def run_prune(ctx: RunContext, model: nn.Module, **options) -> dict:
    ctx.stage_index, ctx.stage_name, ctx.stage_report = 0, "prune", {}
    prune.apply(model, prune.PruneConfig.model_validate(options), ctx)
    return ctx.stage_report


def run_finetune(ctx: RunContext, model: nn.Module, **options) -> dict:
    ctx.stage_index, ctx.stage_name, ctx.stage_report = 1, "finetune", {}
    finetune.apply(model, finetune.FinetuneConfig.model_validate(options), ctx)
    return ctx.stage_report


def calibration_batches(ctx: RunContext, count: int = 8, stage_index: int = 0) -> list:
    """The batches the share stage at ``stage_index`` draws (same loader, same seed)."""
    ctx.stage_index = stage_index
    loader = ctx.data.loader("calibration", shuffle=True, seed=ctx.stage_seed())
    return list(itertools.islice(loader, count))


def run_batch(model: nn.Module, batch) -> torch.Tensor:
    return call_model(model, batch.inputs)
