"""export_model + load: the files a run writes reproduce the in-memory compacted model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from compressor.errors import CheckpointError, ExportError, PlanError
from compressor.formats.compacted import read_metadata
from compressor.formats.export import export_model
from compressor.formats.manifest import diff, snapshot
from compressor.formats.reload import load
from tests.unit.export.helpers import make_ctx


def test_safetensors_and_onnx_reproduce_the_compacted_model(mlp_ctx, compacted, tmp_path):
    model, manifest = compacted
    out = tmp_path / "out"
    artifacts = export_model(model, mlp_ctx, out, manifest)

    x = mlp_ctx.example_inputs(32)
    with torch.no_grad():
        expected = model(**x)
    reloaded = load(out / "model.safetensors")
    assert reloaded.features[0].out_features == 96 and reloaded.classifier.in_features == 48
    assert reloaded.features[0].weight.shape == (96, 64)  # dense and compacted, not masked
    with torch.no_grad():
        assert torch.equal(reloaded(**x), expected)
    onnx_model = load(out / "model.onnx")
    torch.testing.assert_close(onnx_model(**x), expected, atol=1e-5, rtol=1e-5)

    assert artifacts["safetensors"]["size_bytes"] == (out / "model.safetensors").stat().st_size
    assert artifacts["onnx"]["size_bytes"] == (out / "model.onnx").stat().st_size
    onnx = artifacts["onnx"]
    assert onnx["exporter"] == "legacy" and onnx["opset"] == 18
    assert set(onnx["verification"]["max_abs_diff"]) == {"1", "5"}  # two batch sizes
    assert onnx["verification"]["max_abs_diff_overall"] < 1e-4


def test_safetensors_metadata_holds_version_architecture_plan_and_manifest(
    mlp_ctx, compacted, tmp_path
):
    model, manifest = compacted
    export_model(model, mlp_ctx, tmp_path, manifest)
    meta = read_metadata(tmp_path / "model.safetensors")
    assert meta["format_version"] == "1"
    assert json.loads(meta["architecture"])["ref"] == "sample_models.digits_mlp.model:build"
    assert json.loads(meta["manifest"]) == manifest
    assert json.loads(meta["plan"])["name"] == "mlp"
    assert json.loads(meta["inputs"])["x"]["shape"] == [1, 64]


def test_compacted_file_is_smaller_than_the_original(mlp_ctx, compacted, tmp_path):
    from compressor.formats.sizes import reference_sizes

    model, manifest = compacted
    artifacts = export_model(model, mlp_ctx, tmp_path, manifest)
    original = reference_sizes(mlp_ctx)
    # 64-256-256-10 -> 64-96-48-10: about 5.8x fewer weights.
    assert artifacts["safetensors"]["size_bytes"] < original["safetensors"] / 4


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(ids))).mean(1))


def build_tied() -> Tied:
    return Tied()


def test_tied_weights_stored_once_and_reloaded_tied(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "tied.safetensors"))
    (tmp_path / "plan.yaml").write_text(
        f"model:\n  checkpoint: tied.safetensors\n  architecture: {__name__}:build_tied\n"
        "  inputs: {ids: {shape: [1, 7], dtype: int64, high: 50}}\n"
        "export: {onnx: {exporter: legacy}}\n"
    )
    ctx = make_ctx(tmp_path / "plan.yaml")
    artifacts = export_model(ctx.loaded.model, ctx, tmp_path / "out", [])
    assert artifacts["safetensors"]["tied_aliases"] == {"head.weight": "embed.weight"}
    reloaded = load(tmp_path / "out" / "model.safetensors")
    assert reloaded.head.weight is reloaded.embed.weight
    ids = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        assert torch.equal(reloaded(ids=ids), ctx.loaded.model(ids=ids))
    torch.testing.assert_close(
        load(tmp_path / "out" / "model.onnx")(ids=ids),
        ctx.loaded.model(ids=ids),
        atol=1e-5,
        rtol=1e-5,
    )


def test_optimized_and_int8_onnx_are_separate_reported_artifacts(mlp_ctx, compacted, tmp_path):
    model, manifest = compacted
    mlp_ctx.plan.export.onnx.optimize = True
    mlp_ctx.plan.export.onnx.quantize = ["dynamic"]
    artifacts = export_model(model, mlp_ctx, tmp_path, manifest)
    assert {"onnx", "onnx_optimized", "onnx_int8"} <= set(artifacts)
    assert (tmp_path / "model.optimized.onnx").is_file()
    assert (tmp_path / "model.int8.onnx").is_file()
    assert artifacts["onnx_optimized"]["verification"]["passed"]
    # int8 weights: well under half the float file; its error is reported, not gated.
    assert artifacts["onnx_int8"]["size_bytes"] < artifacts["onnx"]["size_bytes"] / 2
    assert set(artifacts["onnx_int8"]["max_abs_diff"]) == {"1", "5"}
    x = mlp_ctx.example_inputs(8)
    agree = load(tmp_path / "model.int8.onnx")(**x).argmax(1) == model(**x).argmax(1)
    assert agree.float().mean() > 0.7


def test_zero_tolerance_fails_with_the_measured_difference_and_writes_nothing(
    mlp_ctx, compacted, tmp_path
):
    model, manifest = compacted
    mlp_ctx.plan.export.onnx.atol = 0.0
    mlp_ctx.plan.export.onnx.rtol = 0.0
    mlp_ctx.plan.export.formats = ["onnx"]
    with pytest.raises(ExportError) as err:
        export_model(model, mlp_ctx, tmp_path / "out", manifest)
    message = str(err.value)
    assert "max |diff|" in message and "atol 0" in message and "legacy" in message
    assert err.value.exit_code == 3
    assert list((tmp_path / "out").iterdir()) == []  # no model.onnx, no staging folder


def test_pickled_module_cannot_be_written_as_safetensors(mlp_ctx, compacted, tmp_path):
    model, manifest = compacted
    mlp_ctx.loaded.architecture = None
    mlp_ctx.loaded.kind = "pickled_module"
    with pytest.raises(CheckpointError) as err:
        export_model(model, mlp_ctx, tmp_path / "out", manifest)
    assert "architecture" in str(err.value) and "export.formats: [onnx]" in str(err.value)
    assert err.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_hf_format_is_refused_for_a_plain_model(mlp_ctx, compacted, tmp_path):
    model, manifest = compacted
    mlp_ctx.plan.export.formats = ["safetensors", "hf"]
    with pytest.raises(PlanError, match="Hugging Face"):
        export_model(model, mlp_ctx, tmp_path / "out", manifest)
    assert not (tmp_path / "out").exists()


def test_hf_format_writes_a_folder_that_reloads(tmp_path):
    from compressor.formats.manifest import diff, snapshot
    from tests.unit.hf.helpers import hf_context

    ctx, model = hf_context(tmp_path, "bert")
    before = snapshot(model)
    layer = model.model.encoder.layer[0]
    keep = torch.arange(0, layer.intermediate.dense.out_features, 2)
    dense_in, dense_out = layer.intermediate.dense, layer.output.dense
    dense_in.weight = torch.nn.Parameter(dense_in.weight.data[keep].clone())
    dense_in.bias = torch.nn.Parameter(dense_in.bias.data[keep].clone())
    dense_in.out_features = len(keep)
    dense_out.weight = torch.nn.Parameter(dense_out.weight.data[:, keep].clone())
    dense_out.in_features = len(keep)
    ctx.plan.export.formats = ["safetensors", "hf"]
    artifacts = export_model(model, ctx, tmp_path / "out", diff(before, model))
    folder = Path(artifacts["hf"]["path"])
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert artifacts["hf"]["size_bytes"] > 0
    inputs = ctx.example_inputs()
    with torch.no_grad():
        expected = model.eval()(**inputs)
        assert torch.equal(load(folder)(**inputs), expected)
        assert torch.equal(load(tmp_path / "out" / "model.safetensors")(**inputs), expected)


def test_load_refuses_files_it_cannot_rebuild(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a compress model file"):
        load(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "missing.onnx")
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"\.safetensors or an \.onnx"):
        load(tmp_path / "w.pt")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="onnxruntime cannot load"):
        load(tmp_path / "bad.onnx")


@pytest.mark.slow
def test_hugging_face_model_round_trips_through_both_files(tmp_path):
    from transformers import BertConfig, BertModel

    from tests.unit.export.helpers import keep_units

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(tmp_path / "bert")
    (tmp_path / "plan.yaml").write_text(
        "model:\n  hf: bert\n  inputs:\n    input_ids: {shape: [1, 16], dtype: int64, high: 100}\n"
        "    attention_mask: {shape: [1, 16], dtype: int64, low: 1, high: 2}\n"
        "export: {onnx: {exporter: legacy}}\n"
    )
    ctx = make_ctx(tmp_path / "plan.yaml")
    model = ctx.loaded.model
    before = snapshot(model)
    layer = model.model.encoder.layer[0]
    keep_units(layer.intermediate.dense, layer.output.dense, 24)  # FFN width 64 -> 24
    export_model(model.eval(), ctx, tmp_path / "out", diff(before, model))
    x = ctx.example_inputs(3)
    reloaded = load(tmp_path / "out" / "model.safetensors")
    assert reloaded.model.encoder.layer[0].intermediate.dense.out_features == 24
    with torch.no_grad():
        expected = model(**x)
        assert torch.equal(reloaded(**x), expected)
    torch.testing.assert_close(
        load(tmp_path / "out" / "model.onnx")(**x), expected, atol=1e-5, rtol=1e-5
    )
