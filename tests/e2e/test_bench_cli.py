"""`compress bench` through the CLI: side-by-side figures, JSON output, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[2]
QUICK = [
    "--rounds",
    "2",
    "--iterations",
    "3",
    "--warmup",
    "1",
    "--no-memory",
    "--threads",
    "1",
    "--exporter",
    "legacy",
    "--batch",
    "1",
    "--batch",
    "8",
]


def bench(*args: str):
    return CliRunner().invoke(app, ["bench", *map(str, args)], terminal_width=160)


@pytest.fixture(scope="module")
def compacted_files(tmp_path_factory) -> tuple[Path, Path]:
    """A compacted digits MLP written by export_model: (model.safetensors, model.onnx)."""
    from compressor.formats.export import export_model
    from tests.unit.export.helpers import compact_mlp, mlp_context

    folder = tmp_path_factory.mktemp("bench")
    ctx = mlp_context(folder)
    model, manifest = compact_mlp(ctx.loaded.model)
    export_model(model, ctx, folder / "out", manifest)
    return folder / "out/model.safetensors", folder / "out/model.onnx"


def test_original_and_compressed_side_by_side(compacted_files, tmp_path):
    st, onnx = compacted_files
    plan = ROOT / "sample_models/digits_mlp/plan.yaml"
    result = bench(plan, st, onnx, *QUICK, "--json", tmp_path / "bench.json")
    assert result.exit_code == 0, result.output
    text = result.output
    for expected in (
        "digits_mlp",
        "model.safetensors",
        "model.onnx",
        "parameters",
        "MACs",
        "size safetensors",
        "latency ort cpu b1",
        "latency torch cpu b8",
        "accuracy",
    ):
        assert expected in text, expected
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [m["name"] for m in data["models"]] == ["digits_mlp", "model.safetensors", "model.onnx"]
    ratio = data["ratios"][0]
    assert ratio["params"] < 0.3 and ratio["macs"] < 0.3  # 64-256-256 -> 64-96-48
    assert f"{ratio['params']:.2f}x" in text
    assert data["settings"]["threads"] == 1


def test_onnx_only_with_explicit_input(compacted_files):
    _, onnx = compacted_files
    result = bench(onnx, "--input", "x=1x64", *QUICK, "--runtime", "onnxruntime")
    assert result.exit_code == 0, result.output
    assert "latency ort cpu b8" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.safetensors"], "missing.safetensors does not exist"),
        ([ROOT / "sample_models/digits_mlp/model.safetensors"], "--architecture"),
        ([ROOT / "sample_models/digits_mlp/plan.yaml", "--runtime", "tensorrt"], "runtimes"),
        ([ROOT / "sample_models/digits_mlp/plan.yaml", "--exporter", "best"], "exporter"),
        ([ROOT / "sample_models/digits_mlp/plan.yaml", "--input", "x=1xa"], "NAME=SHAPE"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, message):
    result = bench(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
