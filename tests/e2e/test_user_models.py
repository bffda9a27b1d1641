"""Models users bring (issue 15), through the real CLI: what used to end in an internal error
or a silent 1.00x is now correct or refused with exit 2 and a message naming the fix."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from tests.compat import zoo
from tests.e2e.runs import exit_code_of, invoke, output_of


def _hf_folder(tmp_path, model_type: str):
    import transformers

    torch.manual_seed(0)
    common = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    if model_type == "deberta-v2":
        model = transformers.DebertaV2Model(transformers.DebertaV2Config(**common))
    else:
        config = transformers.RobertaConfig(**common, pad_token_id=1)
        model = transformers.RobertaModel(config)
    folder = tmp_path / model_type
    model.save_pretrained(folder)
    return folder


def test_heads_that_match_no_attention_are_an_error_not_a_silent_noop(tmp_path, write_plan):
    folder = _hf_folder(tmp_path, "deberta-v2")
    plan = write_plan(
        "version: 1\n"
        f"model:\n  hf: {folder}\n"
        "  inputs:\n    input_ids: {shape: [1, 8], dtype: int64, low: 0, high: 64}\n"
        "stages:\n  - prune: {heads: 0.5}\n"
    )
    result = invoke("run", plan, "--out", tmp_path / "out", "--no-bench")
    text = output_of(result)
    assert exit_code_of(result) == 2, text
    assert "heads: 0.5 matched nothing" in text
    assert "internal error" not in text


def test_sequence_longer_than_the_position_table_is_refused_before_work(tmp_path, write_plan):
    folder = _hf_folder(tmp_path, "roberta")  # 16 positions, 14 usable after padding_idx 1
    plan = write_plan(
        "version: 1\n"
        f"model:\n  hf: {folder}\n"
        "  inputs:\n    input_ids: {shape: [1, 15], dtype: int64, low: 2, high: 64}\n"
        "stages:\n  - prune: {ffn: 0.5}\n"
    )
    result = invoke("run", plan, "--out", tmp_path / "out", "--no-bench")
    text = output_of(result)
    assert exit_code_of(result) == 2, text
    assert "longer than the model's position table" in text and "14 positions" in text
    assert "IndexError" not in text


def test_token_ids_beyond_the_vocabulary_are_refused(tmp_path, write_plan):
    folder = _hf_folder(tmp_path, "roberta")
    plan = write_plan(
        "version: 1\n"
        f"model:\n  hf: {folder}\n"
        "  inputs:\n    input_ids: {shape: [1, 8], dtype: int64, low: 2, high: 500}\n"
        "stages:\n  - prune: {ffn: 0.5}\n"
    )
    result = invoke("run", plan, "--out", tmp_path / "out", "--no-bench")
    assert exit_code_of(result) == 2, output_of(result)
    assert "vocabulary" in output_of(result) and "64 entries" in output_of(result)


@pytest.mark.slow
def test_sequential_with_input_named_x_prunes_and_exports(tmp_path, write_plan):
    ckpt = tmp_path / "mlp.safetensors"
    safetensors.torch.save_model(zoo.torchvision_mlp(), str(ckpt))
    plan = write_plan(
        "version: 1\n"
        f"model:\n  checkpoint: {ckpt}\n  architecture: tests.compat.zoo:torchvision_mlp\n"
        "  inputs:\n    x: {shape: [1, 8], dtype: float32}\n"
        "stages:\n  - prune: {amount: 0.3}\n"
        "export: {onnx: {exporter: legacy}}\n"
    )
    out = tmp_path / "out"
    result = invoke("run", plan, "--out", out, "--no-bench")
    assert exit_code_of(result) == 0, output_of(result)
    report = json.loads((out / "report.json").read_text())
    assert any("x -> input" in n for n in report.get("notes", [])), report.get("notes")
    import compressor

    model = compressor.load(out / "model.safetensors")
    assert model[0].out_features == 11  # 16 hidden units less 30% (rounded down); output kept


def test_init_names_the_input_after_forwards_argument(tmp_path):
    import yaml

    ckpt = tmp_path / "mlp.safetensors"
    safetensors.torch.save_model(zoo.torchvision_mlp(), str(ckpt))
    out = tmp_path / "plan.yaml"
    result = invoke("init", ckpt, "-a", "tests.compat.zoo:torchvision_mlp", "--out", out)
    assert exit_code_of(result) == 0, output_of(result)
    inputs = yaml.safe_load(out.read_text())["model"]["inputs"]
    assert list(inputs) == ["input"]  # nn.Sequential.forward(input), not the generic 'x'
    assert inputs["input"]["shape"] == [1, 8]
