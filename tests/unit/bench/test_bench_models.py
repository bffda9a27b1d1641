"""bench_paths / measure on real small models: any mix of plans, compress files and ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compressor.errors import PlanError
from compressor.formats.export import export_model
from compressor.measure.bench import bench_paths

FAST = {"rounds": 2, "iterations": 3, "warmup": 1, "batch_sizes": [1, 8], "memory": False}


@pytest.fixture
def files(mlp_ctx, compacted, tmp_path) -> tuple[Path, Path, Path]:
    model, manifest = compacted
    export_model(model, mlp_ctx, tmp_path / "out", manifest)
    return tmp_path / "plan.yaml", tmp_path / "out/model.safetensors", tmp_path / "out/model.onnx"


def test_plan_compress_file_and_onnx_side_by_side(files):
    plan, st, onnx = files
    threads_before = torch.get_num_threads()
    result = bench_paths([plan, st, onnx], bench={**FAST, "threads": 1}, exporter="legacy")
    assert torch.get_num_threads() == threads_before  # the bench restores torch's threads
    names = [m["name"] for m in result["models"]]
    assert names[1:] == ["model.safetensors", "model.onnx"]
    first, compressed, onnx_only = result["models"]
    assert compressed["params"] < first["params"] / 4
    assert onnx_only["params"] is None and "torch" not in onnx_only["latency_ms"]
    for m in result["models"]:
        for key in ("1", "8"):
            s = m["latency_ms"]["onnxruntime"]["cpu"][key]
            assert 0 < s["p50"] <= s["p90"] and s["samples"] == 2 * 3
    # The same compacted model in torch and in onnxruntime: the same accuracy.
    assert compressed["metric"]["name"] == "accuracy"
    assert compressed["metric"]["value"] == onnx_only["metric"]["value"]
    ratio = result["ratios"][0]
    assert ratio["model"] == "model.safetensors" and ratio["baseline"] == names[0]
    assert ratio["params"] == round(compressed["params"] / first["params"], 4)
    assert set(ratio["latency_by"]) == {
        "onnxruntime/cpu/1",
        "onnxruntime/cpu/8",
        "torch/cpu/1",
        "torch/cpu/8",
    }
    assert result["settings"]["threads"] == 1 and result["settings"]["interleaved"]


@pytest.mark.slow
def test_text_model_is_timed_at_each_sequence_length():
    ckpt = Path(__file__).resolve().parents[3] / "sample_models/text_transformer/model.safetensors"
    result = bench_paths(
        [ckpt],
        architecture="sample_models.text_transformer.model:build",
        inputs=["input_ids=1x64:int64"],
        bench={
            **FAST,
            "batch_sizes": [2],
            "seq_lengths": [16, 64],
            "runtimes": ["torch"],
            "threads": 1,
        },
    )
    assert set(result["models"][0]["latency_ms"]["torch"]["cpu"]) == {"2x16", "2x64"}
    assert result["primary"]["key"] == "2x16"
    assert result["models"][0]["macs"] > 0 and result["models"][0]["kind"] == "state_dict"


@pytest.mark.slow
def test_peak_memory_is_measured_per_runtime(files):
    plan, st, _ = files
    result = bench_paths(
        [plan, st], bench={**FAST, "memory": True, "batch_sizes": [4]}, exporter="legacy"
    )
    for m in result["models"]:
        assert m["peak_memory_bytes"]["onnxruntime"]["cpu"] > 0
        assert m["peak_memory_bytes"]["torch"]["cpu"] > 0
        assert m["memory_errors"] == {}


def test_bad_inputs_are_clear_errors(files, tmp_path):
    plan, _, _ = files
    with pytest.raises(PlanError, match="does not exist"):
        bench_paths([tmp_path / "nope.safetensors"])
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(PlanError, match="--architecture"):
        bench_paths([tmp_path / "plain.safetensors"])
    with pytest.raises(PlanError, match="batch_sizes"):
        bench_paths([plan], bench={"batch_sizes": [0]})
    with pytest.raises(PlanError, match="runtimes"):
        bench_paths([plan], bench={"runtimes": ["tensorrt"]})


def test_onnx_file_with_symbolic_sequence_needs_input_flag(tmp_path):
    from compressor.formats.onnx.export import export_onnx
    from compressor.spec.sections import OnnxSpec
    from sample_models.text_transformer.model import build

    model = build(vocab_size=200, dim=32, depth=1, num_heads=2, ffn=64).eval()
    export_onnx(
        model,
        {"input_ids": torch.randint(1, 200, (2, 16))},
        tmp_path / "t.onnx",
        OnnxSpec(exporter="legacy"),
    )
    with pytest.raises(PlanError, match="--input input_ids="):
        bench_paths([tmp_path / "t.onnx"], bench=FAST)
