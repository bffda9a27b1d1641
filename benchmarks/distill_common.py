"""Shared helpers of the distillation benchmarks: build a RunContext from a sample plan and
run stages through the library, as ``compress run`` does (without export or bench)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from compressor.counting import count_macs, count_params
from compressor.run.context import RunContext, context_for_plan
from compressor.stages.registry import get_stage

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


def make_context(
    plan_path: Path, *, seed: int = 0, overrides: list[str] | None = None, quiet: bool = True
) -> tuple[RunContext, torch.nn.Module]:
    """The RunContext and the loaded model of a plan (stages are run by :func:`run_stages`)."""
    return context_for_plan(plan_path, [f"seed={seed}", *(overrides or [])], quiet=quiet)


def run_stages(
    ctx: RunContext, model: torch.nn.Module, stages: list[tuple[str, dict[str, Any]]]
) -> tuple[torch.nn.Module, list[dict]]:
    """Run ``[(stage name, options)]`` in order, as the runner does; returns the model and
    each stage's report."""
    reports = []
    for index, (name, options) in enumerate(stages):
        stage = get_stage(name)
        cfg = stage.config.model_validate(options)
        ctx.stage_index, ctx.stage_name, ctx.stage_report = index, name, {}
        torch.manual_seed(ctx.stage_seed())
        t0 = time.perf_counter()
        model = stage.apply(model, cfg, ctx)
        reports.append(
            {"name": name, "seconds": round(time.perf_counter() - t0, 2), **ctx.stage_report}
        )
    return model, reports


def facts(ctx: RunContext, model: torch.nn.Module) -> dict[str, float]:
    """Metric, parameter and MAC ratios of ``model`` against the original."""
    example = ctx.example_inputs()
    return {
        "metric": ctx.evaluate(model),
        "params_ratio": count_params(model) / count_params(ctx.original),
        "macs_ratio": count_macs(model, example) / count_macs(ctx.original, example),
    }


def mean_spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of a list of figures."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def print_result(result: dict[str, Any]) -> None:
    """The machine-readable last line every benchmark ends with."""
    print("RESULT " + json.dumps(result, sort_keys=True))
