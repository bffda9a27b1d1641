"""`compress run` through the CLI: every artifact written, reloadable, verified, gated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from compressor.formats.reload import load

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ["model.onnx", "model.safetensors", "report.json", "report.md", "report.png"]


def mlp_plan(extra: str = "") -> str:
    return f"""
version: 1
name: mlp_e2e
model:
  checkpoint: {ROOT}/sample_models/digits_mlp/model.safetensors
  architecture: sample_models.digits_mlp.model:build
  inputs:
    x: {{shape: [1, 64], dtype: float32, low: 0.0, high: 1.0}}
data:
  train: builtin:digits?split=train
  eval: builtin:digits?split=test
export:
  onnx: {{exporter: legacy}}
bench: {{batch_sizes: [1, 8], rounds: 2, iterations: 3, warmup: 1, memory: false}}
{extra}"""


def run(*args: str):
    return CliRunner().invoke(app, ["run", *map(str, args)])


def eval_accuracy(model) -> float:
    from compressor.data.batches import InputLayout
    from compressor.data.sources import load_source, parse_source
    from compressor.spec.sections import InputSpec

    layout = InputLayout.from_specs({"x": InputSpec(shape=[1, 64])})
    data = load_source(parse_source("builtin:digits?split=test"), layout)
    with torch.no_grad():
        out = model(**data.inputs)
    return (out.argmax(1) == data.target).float().mean().item()


def test_run_without_stages_exports_and_benches_the_original(write_plan, tmp_path):
    out = tmp_path / "out"
    result = run(write_plan(mlp_plan()), "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS  # no temp or staging leftovers
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1 and report["plan"]["stages"] == []
    assert report["ratios"]["params"] == 1.0 and report["ratios"]["speedup"] > 0
    assert set(report["models"]["original"]["latency_ms"]) == {"onnxruntime", "torch"}
    assert report["onnx"]["exporter"] == "legacy" and report["onnx_max_abs_diff"] < 1e-4
    # With no stage the "compacted" model is the original: both files reproduce it.
    from safetensors.torch import load_file

    from sample_models.digits_mlp.model import build

    original = build()
    original.load_state_dict(load_file(ROOT / "sample_models/digits_mlp/model.safetensors"))
    x = torch.rand(16, 64)
    with torch.no_grad():
        assert torch.equal(load(out / "model.safetensors")(x=x), original.eval()(x=x))
    torch.testing.assert_close(load(out / "model.onnx")(x=x), original(x=x), atol=1e-5, rtol=1e-5)
    assert "original" in result.output and "ratio" in result.output


@pytest.mark.slow
def test_finetuned_model_files_reproduce_the_in_memory_model(write_plan, tmp_path):
    out = tmp_path / "out"
    plan = mlp_plan("stages:\n  - finetune: {epochs: 1, lr: 1.0e-3}\n")
    result = run(write_plan(plan), "--out", out, "--no-bench")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    # The report's metric was computed on the in-memory model; the reloaded files match it.
    assert eval_accuracy(load(out / "model.safetensors")) == report["metric"]["after"]
    assert eval_accuracy(load(out / "model.onnx")) == report["metric"]["after"]
    assert report["models"]["compressed"]["latency_ms"] == {}  # --no-bench


def test_onnx_verification_failure_exits_nonzero_with_the_difference(write_plan, tmp_path):
    out = tmp_path / "out"
    result = run(
        write_plan(mlp_plan()),
        "--out",
        out,
        "--set",
        "export.onnx.atol=0",
        "--set",
        "export.onnx.rtol=0",
        "--set",
        f"model.checkpoint={ROOT}/sample_models/digits_cnn/model.safetensors",
        "--set",
        "model.architecture=sample_models.digits_cnn.model:build",
        "--set",
        "model.inputs={x: {shape: [1, 1, 8, 8], low: 0, high: 1}}",
    )
    assert result.exit_code == 3, result.output
    assert "ONNX export of model.onnx failed" in result.output
    assert "max |diff|" in result.output and "atol 0" in result.output
    assert "Traceback" not in result.output
    assert not (out / "model.onnx").exists() and not (out / "report.json").exists()
    assert not (out / "model.safetensors").exists()  # no partial set of artifacts either


def test_impossible_gate_exits_1_naming_it_and_no_gate_exits_0(write_plan, tmp_path):
    gated = write_plan(mlp_plan("gates: {max_size_ratio: 0.01}\n"), "gated.yaml")
    result = run(gated, "--out", tmp_path / "a", "--no-bench")
    assert result.exit_code == 1, result.output
    assert "gate failed: max_size_ratio: measured 1" in result.output
    assert "bound <= 0.01" in result.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["gates"]["failed"][0].startswith("max_size_ratio")
    assert "**FAILED**" in (tmp_path / "a" / "report.md").read_text()

    plain = write_plan(mlp_plan(), "plain.yaml")
    assert run(plain, "--out", tmp_path / "b", "--no-bench").exit_code == 0
    # --gate overrides the plan's bound.
    assert (
        run(gated, "--out", tmp_path / "c", "--no-bench", "--gate", "max_size_ratio=1.5").exit_code
        == 0
    )


@pytest.mark.slow
@pytest.mark.parametrize("sample", ["digits_mlp", "digits_cnn", "text_transformer"])
def test_each_sample_plan_writes_all_outputs(sample, tmp_path):
    out = tmp_path / "out"
    plan = ROOT / "sample_models" / sample / "plan.yaml"
    result = run(
        plan,
        "--out",
        out,
        "--set",
        "bench.rounds=1",
        "--set",
        "bench.iterations=2",
        "--set",
        "bench.warmup=1",
        "--set",
        "bench.memory=false",
        "--set",
        "bench.runtimes=[onnxruntime]",
        "--set",
        "stages.1.finetune.epochs=1",
    )
    assert result.exit_code in (0, 1), result.output  # 1: the plan's own gate, stated
    assert {p.name for p in out.iterdir()} >= set(OUTPUTS)
    report = json.loads((out / "report.json").read_text())
    assert report["ratios"]["params"] < 1  # the plan really compacted the model
    assert report["onnx_max_abs_diff"] < 1e-4
    compacted = load(out / "model.safetensors")
    assert (
        sum(p.numel() for p in compacted.parameters()) == report["models"]["compressed"]["params"]
    )
