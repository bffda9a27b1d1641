"""Fixtures for the export tests (see helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.nn as nn

from compressor.run.context import RunContext
from tests.unit.export.helpers import compact_mlp, mlp_context


@pytest.fixture
def mlp_ctx(tmp_path: Path) -> RunContext:
    return mlp_context(tmp_path)


@pytest.fixture
def compacted(mlp_ctx: RunContext) -> tuple[nn.Module, list]:
    """The sample MLP with its hidden layers cut from 256 to 96 and 48 units + its manifest."""
    return compact_mlp(mlp_ctx.loaded.model)
