"""Shared fixtures: the repository's sample models and a helper to write plans."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The PyPI torchvision wheel (a dev dependency, for the coverage tests) needs this next to the
# CPU torch, or transformers' imports fail (see the module); it only wraps
# torch.library.register_fake. CLI subprocesses get it through tests/compat/sitecustomize.py.
import tests.compat.torchvision_cpu  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT / "tests" / "compat"), os.environ.get("PYTHONPATH")) if p
)

# Two cores: keep torch from oversubscribing when pytest-xdist or helpers run in parallel.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def write_plan(tmp_path: Path):
    """Write a plan (YAML text) into a temporary folder and return its path."""

    def write(text: str, name: str = "plan.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def plan_schema_keys() -> list[str]:
    """Every field name the plan schema knows (all stages' options included), sorted: the
    fuzzers' vocabulary of keys, so new options are fuzzed without anyone listing them."""
    from compressor.plan.schema import Plan

    names: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                names.update(node["properties"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(Plan.model_json_schema())
    return sorted(names)


def cnn_model_block(checkpoint: Path | None = None) -> str:
    """The ``model:`` section for the sample digits CNN (absolute checkpoint path)."""
    ckpt = checkpoint or SAMPLES / "digits_cnn" / "model.safetensors"
    return (
        "model:\n"
        f"  checkpoint: {ckpt}\n"
        "  architecture: sample_models.digits_cnn.model:build\n"
        "  inputs:\n"
        "    x: {shape: [1, 1, 8, 8], dtype: float32, low: 0.0, high: 1.0}\n"
    )
