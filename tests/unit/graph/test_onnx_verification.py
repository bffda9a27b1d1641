"""The ONNX check that decides whether a pruned model's export is trusted.

Random-init benchmark models (Inception-v3, EfficientNet-B0, ConvMixer in the coverage sweep)
have logits whose float32 rounding alone exceeds a fixed 1e-4 tolerance: torch float32 is as
far from a float64 run as onnxruntime is. Such an export passes through the float64
reference; an export that computes something else, or has NaN where torch has none, still
fails, and the message says what differs (never "max |diff| 0" for a failing check).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from compressor.formats.onnx.export import (
    FLOAT64_SLACK,
    compare,
    describe_failure,
    float64_check,
    value_differences,
)

from .helpers import export_and_run


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.body(x)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return _Net().eval()


def _exact(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    import copy

    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double()).numpy()


def test_rounding_within_torchs_own_float32_error_passes():
    model, x = _model(), torch.rand(2, 8)
    exact = _exact(model, x)
    torch_f32 = exact + 1e-3  # torch's own float32 error: 1e-3
    onnx = exact - 2e-3  # onnxruntime's: 2e-3, within the slack, outside atol 1e-4
    plain = value_differences(torch_f32, onnx, atol=1e-4, rtol=1e-4)
    assert not plain["passed"] and plain["max_abs_diff"] == pytest.approx(3e-3)
    verdict = float64_check(model, {"x": x}, torch_f32, onnx)
    assert verdict["passed"] and "float64" in verdict["passed_by"]
    assert verdict["float64"]["torch_error"] == pytest.approx(1e-3)


def test_error_beyond_torchs_rounding_fails():
    model, x = _model(), torch.rand(2, 8)
    exact = _exact(model, x)
    onnx = exact + (FLOAT64_SLACK + 1) * 1e-3
    verdict = float64_check(model, {"x": x}, exact + 1e-3, onnx)
    assert not verdict["passed"]


def test_wrong_export_fails_with_the_worst_value(tmp_path):
    model, x = _model(), torch.rand(3, 8)
    export_and_run(model, {"x": x}, tmp_path / "m.onnx")
    other = _model()
    with torch.no_grad():
        other.body[2].bias += 0.05  # torch now computes something the file does not
    result = compare(other, tmp_path / "m.onnx", [{"x": x}], atol=1e-4, rtol=1e-4, seq=False)
    assert not result["passed"]
    message = describe_failure(result)
    assert "max |diff| 0.05" in message and "worst: torch" in message
    assert "against float64, onnxruntime is off by" in message


class _NaNAt(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y = self.inner(x).clone()
        y[0, 1] = float("nan")
        return y


def test_nan_in_torch_only_is_named_not_hidden(tmp_path):
    model, x = _model(), torch.rand(2, 8)
    export_and_run(model, {"x": x}, tmp_path / "m.onnx")
    result = compare(
        _NaNAt(model), tmp_path / "m.onnx", [{"x": x}], atol=1e-4, rtol=1e-4, seq=False
    )
    assert not result["passed"]
    assert result["max_abs_diff"]["2"] < 1e-5  # every finite value agrees...
    assert "1 NaN in torch, not in onnxruntime" in describe_failure(result)  # ...and it says why
