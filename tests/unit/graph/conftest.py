"""Fixtures for the structural-edit engine tests."""

from __future__ import annotations

import pytest

from tests.unit.graph.helpers import onnx_max_diff


@pytest.fixture
def onnx_diff(tmp_path):
    """``onnx_diff(model, inputs) -> max |onnxruntime - torch|`` (legacy exporter, opset 17)."""
    return lambda model, inputs: onnx_max_diff(model, inputs, tmp_path / "model.onnx")
