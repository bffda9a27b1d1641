"""A real RunContext on a sample model, as ``compressor.runner`` builds one."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from compressor.checkpoint import load_model
from compressor.context import DataBundle, RunContext
from compressor.plan_io import load_plan
from tests.conftest import SAMPLES


def make_ctx(plan_path: Path) -> tuple[RunContext, nn.Module]:
    loaded_plan = load_plan(plan_path)
    plan = loaded_plan.plan
    loaded = load_model(plan.model, loaded_plan.base_dir)
    data = DataBundle(plan, loaded_plan.base_dir, loaded.input_specs, loaded.tokenizer)
    ctx = RunContext(
        plan=plan,
        base_dir=loaded_plan.base_dir,
        loaded=loaded,
        device=torch.device("cpu"),
        data=data,
        quiet=True,
    )
    ctx.original = ctx.frozen_copy(loaded.model)
    return ctx, loaded.model


def sample_ctx(name: str) -> tuple[RunContext, nn.Module]:
    """The sample model ``name`` with its own plan's data (the plan's stages are not run)."""
    return make_ctx(SAMPLES / name / "plan.yaml")


def load_sample(name: str, build) -> nn.Module:
    """A sample model's trained weights in a freshly built module (eval mode)."""
    from safetensors.torch import load_file

    model = build()
    model.load_state_dict(load_file(str(SAMPLES / name / "model.safetensors")))
    return model.eval()
