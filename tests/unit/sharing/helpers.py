"""A real RunContext on a sample model, as ``compressor.run.runner`` builds one."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from compressor.run.context import RunContext, context_for_plan
from tests.conftest import SAMPLES


def make_ctx(plan_path: Path) -> tuple[RunContext, nn.Module]:
    return context_for_plan(plan_path)


def sample_ctx(name: str) -> tuple[RunContext, nn.Module]:
    """The sample model ``name`` with its own plan's data (the plan's stages are not run)."""
    return make_ctx(SAMPLES / name / "plan.yaml")


def load_sample(name: str, build) -> nn.Module:
    """A sample model's trained weights in a freshly built module (eval mode)."""
    from safetensors.torch import load_file

    model = build()
    model.load_state_dict(load_file(str(SAMPLES / name / "model.safetensors")))
    return model.eval()
