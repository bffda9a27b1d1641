"""export_onnx: exporter choice and fallback, dynamic axes, external data, verification."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.errors import ExportError
from compressor.formats.onnx.export import export_onnx
from compressor.formats.onnx.session import OnnxModel
from compressor.spec.sections import InputSpec, OnnxSpec
from sample_models.text_transformer.model import build as build_text


@pytest.mark.slow
def test_dynamo_export_of_text_model_has_dynamic_batch_and_sequence(tmp_path):
    torch.manual_seed(0)
    model = build_text(vocab_size=300, dim=32, depth=1, num_heads=2, ffn=64).eval()
    ids = torch.randint(1, 300, (6, 64))
    specs = {"input_ids": InputSpec(shape=[1, 64], dtype="int64", high=300)}
    info = export_onnx(model, {"input_ids": ids}, tmp_path / "m.onnx", OnnxSpec(), specs=specs)
    assert info["exporter"] == "dynamo" and info["fallback_reason"] is None
    assert info["dynamic_axes"] == {"input_ids": [0, 1]}
    # Verified at two batch sizes, the second at a shorter sequence too.
    assert set(info["verification"]["max_abs_diff"]) == {"1x64", "5x32"}
    onnx_model = OnnxModel(tmp_path / "m.onnx")
    assert all(isinstance(d, str) for d in onnx_model.session.get_inputs()[0].shape)
    other = torch.randint(1, 300, (3, 17))  # a shape never seen during export
    torch.testing.assert_close(
        onnx_model(input_ids=other), model(input_ids=other), atol=1e-5, rtol=1e-5
    )


class Branchy(nn.Module):
    """Data-dependent control flow: torch.export refuses it, the tracing exporter does not."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x) * 2
        return self.fc(x) - 1


def test_auto_falls_back_to_legacy_and_records_why(tmp_path):
    info = export_onnx(
        Branchy().eval(), {"x": torch.rand(6, 4)}, tmp_path / "m.onnx", OnnxSpec(exporter="auto")
    )
    assert info["exporter"] == "legacy"
    assert info["fallback_reason"].startswith("dynamo exporter failed: ")
    assert "data-dependent" in info["fallback_reason"]
    assert info["verification"]["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_forced_dynamo_failure_is_an_export_error_naming_the_cause(tmp_path):
    with pytest.raises(ExportError, match=r"dynamo exporter failed.*data-dependent"):
        export_onnx(
            Branchy().eval(),
            {"x": torch.rand(6, 4)},
            tmp_path / "m.onnx",
            OnnxSpec(exporter="dynamo"),
        )
    assert list(tmp_path.iterdir()) == []


def test_external_data_writes_one_data_file_that_loads(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()

    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x)

    named = Named().eval()
    x = torch.rand(4, 64)
    info = export_onnx(
        named, {"x": x}, tmp_path / "m.onnx", OnnxSpec(exporter="legacy", external_data="always")
    )
    assert info["external_data"] is True
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["m.onnx", "m.onnx.data"]
    assert info["size_bytes"] == sum(p.stat().st_size for p in tmp_path.iterdir())
    assert (tmp_path / "m.onnx").stat().st_size < 10_000  # the weights live in the data file
    torch.testing.assert_close(
        OnnxModel(tmp_path / "m.onnx")(x=x), named(x=x), atol=1e-5, rtol=1e-5
    )


def test_static_axes_from_the_spec_are_respected(tmp_path):
    model = nn.Linear(8, 2).eval()

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x)

    specs = {"x": InputSpec(shape=[3, 8], dynamic=[])}
    info = export_onnx(
        Wrap().eval(),
        {"x": torch.rand(3, 8)},
        tmp_path / "m.onnx",
        OnnxSpec(exporter="legacy"),
        specs=specs,
    )
    assert info["dynamic_axes"] == {"x": []}
    assert set(info["verification"]["max_abs_diff"]) == {"3"}
    assert OnnxModel(tmp_path / "m.onnx").session.get_inputs()[0].shape == [3, 8]
