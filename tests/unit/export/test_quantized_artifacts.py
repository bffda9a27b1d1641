"""Lower-precision ONNX copies (dynamic int8, static QDQ int8 calibrated on the plan's data,
fp16) on the sample digits MLP: written with onnxruntime's tooling, smaller, still close to
the float model, evaluated with the plan's metric and gated by name."""

from __future__ import annotations

import onnx
import pytest

from compressor.errors import ExportError
from compressor.formats.export import export_model
from compressor.formats.onnx.quantize import quantize_static_int8
from compressor.formats.reload import load
from compressor.measure.artifact_metrics import evaluate_artifacts
from compressor.measure.gates import check_gates
from compressor.measure.report import build_report
from compressor.plan.load import load_plan
from compressor.spec.sections import GatesSpec, OnnxSpec
from tests.unit.export.helpers import MLP_PLAN, make_ctx


@pytest.fixture
def calibrated_ctx(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(
        MLP_PLAN.replace(
            "  eval: builtin:digits?split=test",
            "  eval: builtin:digits?split=test\n  calibration: builtin:digits?split=train",
        )
    )
    return make_ctx(path, ["export.onnx.quantize=[dynamic, static, fp16]"])


def test_quantize_true_is_the_dynamic_copy_it_always_was():
    assert OnnxSpec(quantize=True).quantize == ["dynamic"]
    assert OnnxSpec(quantize=False).quantize == []
    assert OnnxSpec(quantize=["static", "static", "fp16"]).quantize == ["static", "fp16"]


def test_each_copy_is_written_smaller_and_close_to_torch(calibrated_ctx, compacted, tmp_path):
    model, manifest = compacted
    artifacts = export_model(model, calibrated_ctx, tmp_path / "out", manifest)
    float_bytes = artifacts["onnx"]["size_bytes"]
    static = artifacts["onnx_int8_static"]
    assert static["calibration_batches"] == 8 and static["calibration_examples"] > 8
    graph = onnx.load(static["path"]).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format, activations included
    dynamic_ops = {n.op_type for n in onnx.load(artifacts["onnx_int8"]["path"]).graph.node}
    assert "DynamicQuantizeLinear" in dynamic_ops or "MatMulInteger" in dynamic_ops
    for key in ("onnx_int8", "onnx_int8_static"):
        assert artifacts[key]["size_bytes"] < float_bytes / 2, key
    fp16 = artifacts["onnx_fp16"]
    assert float_bytes * 0.4 < fp16["size_bytes"] < float_bytes * 0.6
    assert max(fp16["max_abs_diff"].values()) < 1e-2  # half precision: small, not zero
    x = calibrated_ctx.example_inputs(64)
    want = model(**x).argmax(1)
    for key in ("onnx_int8", "onnx_int8_static", "onnx_fp16"):
        agree = (load(artifacts[key]["path"])(**x).argmax(1) == want).float().mean()
        assert agree > 0.8, (key, float(agree))


def test_copies_get_the_metric_their_own_rows_and_gates(calibrated_ctx, compacted, tmp_path):
    model, manifest = compacted
    artifacts = export_model(model, calibrated_ctx, tmp_path / "out", manifest)
    evaluate_artifacts(calibrated_ctx, artifacts)
    torch_accuracy = calibrated_ctx.evaluate(model)
    for key in ("onnx_int8", "onnx_int8_static", "onnx_fp16"):
        value = artifacts[key]["metric"]["value"]
        assert artifacts[key]["metric"]["name"] == "accuracy"
        assert abs(value - torch_accuracy) < 0.05, (key, value, torch_accuracy)
    before = calibrated_ctx.evaluate(calibrated_ctx.original)
    report = build_report(
        calibrated_ctx,
        original_facts={"params": 100},
        compressed_facts={"params": 40},
        metric_before=before,
        metric_after=torch_accuracy,
        artifacts=artifacts,
        bench=None,
        seconds=1.0,
    )
    assert {"original", "compressed", "int8", "int8-static", "fp16"} <= set(report["models"])
    ratios = report["artifact_ratios"]["int8-static"]
    # int8 weights: a quarter of float bytes, of a model with fewer units than the original
    assert ratios["size"] < report["ratios"]["size"] / 2, (ratios, report["ratios"]["size"])
    assert ratios["size_basis"] == "onnx vs original safetensors"
    assert ratios["metric_drop"] == pytest.approx(
        before - artifacts["onnx_int8_static"]["metric"]["value"], abs=1e-6
    )
    # Gates judge the named copy: its metric drop passes a loose bound and fails an impossible
    # one, the failure names the artifact.
    assert check_gates(report, GatesSpec(artifact="int8-static", max_metric_drop=0.2), {}) == []
    failures = check_gates(report, GatesSpec(artifact="int8", min_metric=1.01), {})
    assert len(failures) == 1 and "artifact int8" in failures[0]
    assert report["gates"]["checked"][0]["artifact"] == "int8"


def test_static_quantisation_without_calibration_data_is_refused(compacted, tmp_path):
    with pytest.raises(ExportError, match="needs calibration data"):
        quantize_static_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", [], external=False)
    plan = tmp_path / "plan.yaml"
    plan.write_text(MLP_PLAN)
    from compressor.errors import PlanError

    with pytest.raises(PlanError) as info:
        load_plan(plan, ["export.onnx.quantize=[static]"])
    assert "static int8 quantisation calibrates on data" in str(info.value)
    with pytest.raises(PlanError) as info:
        load_plan(plan, ["gates.artifact=fp16", "gates.min_metric=0.5"])
    assert "add fp16 to export.onnx.quantize" in str(info.value)


def test_static_int8_quantises_matrix_products_and_leaves_norms_and_softmax_float(tmp_path):
    # A real transformer block: quantising LayerNorm/Softmax inputs too (onnxruntime's
    # default) wrecked all-MiniLM-L6-v2 (cosine 0.33); only MatMul/Gemm/Conv get QDQ.
    import torch

    class Block(torch.nn.Module):
        """Self-attention + MLP with LayerNorm, written out (no fused attention kernel)."""

        def __init__(self, d: int = 32):
            super().__init__()
            self.qkv, self.out = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
            self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(d, 64), torch.nn.GELU(), torch.nn.Linear(64, d)
            )

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            attn = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
            x = self.norm1(x + self.out(attn @ v))
            return self.norm2(x + self.mlp(x))

    torch.manual_seed(0)
    block = Block().eval()
    x = torch.randn(2, 10, 32)
    src = tmp_path / "block.onnx"
    torch.onnx.export(block, (x,), str(src), input_names=["x"], dynamo=False, opset_version=17)
    batches = [{"x": torch.randn(2, 10, 32)} for _ in range(4)]
    quantize_static_int8(src, tmp_path / "q.onnx", batches, external=False)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    produced_by = {o: n for n in graph.node for o in n.output}
    ops = {n.op_type for n in graph.node}
    assert "QuantizeLinear" in ops
    for node in graph.node:
        if node.op_type in ("Softmax", "LayerNormalization"):
            feeders = [produced_by.get(i) for i in node.input]
            assert not any(f is not None and f.op_type == "DequantizeLinear" for f in feeders), (
                node.op_type
            )
    quantized = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    assert quantized and all(
        produced_by.get(n.input[0]) is not None
        and produced_by[n.input[0]].op_type == "DequantizeLinear"
        for n in quantized
    )
    from compressor.formats.onnx.session import OnnxModel

    got = OnnxModel(tmp_path / "q.onnx")(x=x)
    with torch.no_grad():
        want = block(x)
    cosine = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cosine > 0.99, float(cosine)
