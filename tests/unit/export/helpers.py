"""Helpers for export and bench tests: a real RunContext on the sample digits MLP, and a
hand-compacted copy of it (units removed the way the prune stage removes them)."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from compressor.formats.manifest import diff, snapshot
from compressor.run.context import RunContext, context_for_plan

ROOT = Path(__file__).resolve().parents[3]
MLP_PLAN = f"""
version: 1
name: mlp
model:
  checkpoint: {ROOT}/sample_models/digits_mlp/model.safetensors
  architecture: sample_models.digits_mlp.model:build
  inputs:
    x: {{shape: [1, 64], dtype: float32, low: 0.0, high: 1.0}}
data:
  eval: builtin:digits?split=test
export:
  onnx: {{exporter: legacy}}
"""


def make_ctx(plan_path: Path, overrides: list[str] | None = None) -> RunContext:
    """The RunContext the runner would build for this plan (CPU, quiet)."""
    return context_for_plan(plan_path, overrides)[0]


def keep_units(first: nn.Linear, second: nn.Linear, keep: int) -> None:
    """Remove all but the ``keep`` largest-norm output units of ``first`` (and the matching
    inputs of ``second``), physically: smaller dense tensors, updated attributes."""
    idx = first.weight.norm(dim=1).argsort(descending=True)[:keep].sort().values
    first.weight = nn.Parameter(first.weight.detach()[idx].clone())
    first.bias = nn.Parameter(first.bias.detach()[idx].clone())
    first.out_features = keep
    second.weight = nn.Parameter(second.weight.detach()[:, idx].clone())
    second.in_features = keep


def mlp_context(folder: Path) -> RunContext:
    """A RunContext for the sample MLP (plan written into ``folder``)."""
    path = folder / "plan.yaml"
    path.write_text(MLP_PLAN)
    return make_ctx(path)


def compact_mlp(model: nn.Module) -> tuple[nn.Module, list]:
    """Cut the sample MLP's hidden layers from 256 to 96 and 48 units; returns the model and
    its structure manifest."""
    before = snapshot(model)
    keep_units(model.features[0], model.features[2], 96)
    keep_units(model.features[2], model.classifier, 48)
    return model.eval(), diff(before, model)
