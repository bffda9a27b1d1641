"""A plan that prunes, merges neurons, fine-tunes and clusters the weights runs end to end
through ``compress run``: every stage reported, the exported file codebook-encoded and
reloading to the exported ONNX model's outputs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from compressor.formats.compacted import read_metadata
from compressor.formats.reload import load
from tests.conftest import SAMPLES

PLAN = f"""
version: 1
seed: 0
model:
  checkpoint: {SAMPLES}/digits_mlp/model.safetensors
  architecture: sample_models.digits_mlp.model:build
  inputs:
    x: {{shape: [1, 64], dtype: float32, low: 0.0, high: 1.0}}
data:
  train: builtin:digits?split=train
  eval: builtin:digits?split=test
stages:
  - prune: {{amount: 0.25, criterion: l2, round_to: 8}}
  - share: {{method: merge-neurons, amount: 0.25, round_to: 8}}
  - finetune: {{epochs: 1, lr: 2.0e-3}}
  - share: {{method: cluster-weights, k: 16}}
export:
  onnx: {{exporter: legacy}}
gates:
  max_metric_drop: 0.03
"""


@pytest.mark.slow
def test_prune_share_finetune_cluster_plan_runs_end_to_end(write_plan, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["run", str(write_plan(PLAN)), "--out", str(out), "--no-bench"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert [s["name"] for s in stages] == ["prune", "share", "finetune", "share"]
    assert stages[1]["method"] == "merge-neurons" and stages[3]["method"] == "cluster-weights"
    assert stages[1]["units"]["features.0"] == {"before": 192, "after": 144}
    # Widths after prune (256 -> 192) and merge (192 -> 144): 0.5625 of the hidden units.
    model = load(out / "model.safetensors")
    assert model.features[0].out_features == 144 and model.features[2].out_features == 144
    meta = read_metadata(out / "model.safetensors")
    encoded = json.loads(meta["encoded"])
    # Every layer weight of >= 1024 values (classifier: 10 x 144) is stored in 4 bits.
    assert set(encoded) == {"features.0.weight", "features.2.weight", "classifier.weight"}
    assert all(e["bits"] == 4 for e in encoded.values()) and meta["format_version"] == "2"
    assert int(torch.unique(model.features[2].weight).numel()) <= 16
    onnx_model = load(out / "model.onnx")
    x = torch.rand(16, 64)
    with torch.no_grad():
        assert torch.allclose(onnx_model(x=x), model(x), atol=1e-4)
    assert stages[3]["metric"] == report["metric"]["after"] >= report["metric"]["before"] - 0.03
