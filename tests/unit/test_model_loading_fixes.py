"""Loading what users bring: inputs bound to forward(), tied tensors stored once, state-dict
versions that safetensors cannot carry (issue 15), each on a real small architecture."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from compressor.errors import CheckpointError, PlanError
from compressor.formats.loading import load_model
from compressor.spec.sections import ModelSpec
from tests.compat import zoo


def _spec(path, factory: str, inputs: dict) -> ModelSpec:
    return ModelSpec(
        checkpoint=str(path), architecture=f"tests.compat.zoo:{factory}", inputs=inputs
    )


def test_sequential_input_named_x_is_bound_by_position(tmp_path):
    original = zoo.torchvision_mlp()
    safetensors.torch.save_model(original, str(tmp_path / "m.safetensors"))
    spec = _spec(tmp_path / "m.safetensors", "torchvision_mlp", {"x": {"shape": [2, 8]}})
    loaded = load_model(spec)
    x = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(x=x), original(x))  # Sequential.forward takes 'input'
    assert any("by position" in n and "x -> input" in n for n in loaded.notes)


def test_bert_input_named_x_reaches_input_ids(tmp_path):
    original = zoo.tiny_bert_mlm()
    safetensors.torch.save_model(original, str(tmp_path / "m.safetensors"))
    spec = _spec(
        tmp_path / "m.safetensors",
        "tiny_bert_mlm",
        {"x": {"shape": [1, 8], "dtype": "int64", "low": 0, "high": 64}},
    )
    loaded = load_model(spec)
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded.model(x=ids).logits, original(input_ids=ids).logits)


def test_inputs_that_fit_no_argument_order_are_refused_with_the_signature(tmp_path):
    safetensors.torch.save_model(zoo.torchvision_mlp(), str(tmp_path / "m.safetensors"))
    spec = _spec(
        tmp_path / "m.safetensors",
        "torchvision_mlp",
        {"x": {"shape": [2, 8]}, "y": {"shape": [2, 8]}},
    )
    with pytest.raises(PlanError) as info:
        load_model(spec)
    assert "MLP.forward(input" in str(info.value)
    assert "1 positional argument" in str(info.value)


def test_matching_name_at_another_position_is_refused(tmp_path):
    safetensors.torch.save_model(zoo.tiny_bert_mlm(), str(tmp_path / "m.safetensors"))
    ints = {"dtype": "int64", "low": 0, "high": 2}
    spec = _spec(
        tmp_path / "m.safetensors",
        "tiny_bert_mlm",
        {"mask": {"shape": [1, 8], **ints}, "input_ids": {"shape": [1, 8], **ints}},
    )
    with pytest.raises(PlanError, match=r"input_ids.*other positions"):
        load_model(spec)


@pytest.mark.parametrize(
    ("factory", "alias", "stored"),
    [
        (
            "tiny_bert_mlm",
            "cls.predictions.decoder.weight",
            "bert.embeddings.word_embeddings.weight",
        ),
        ("tiny_t5_encoder", "encoder.embed_tokens.weight", "shared.weight"),
    ],
)
def test_tied_tensor_stored_once_is_retied(tmp_path, factory, alias, stored):
    original = getattr(zoo, factory)()
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_model(original, str(path))
    keys = set(safetensors.torch.load_file(str(path)))
    assert (alias in keys) != (stored in keys)  # safetensors kept one of the two names
    spec = _spec(path, factory, {"input_ids": {"shape": [1, 8], "dtype": "int64", "high": 64}})
    model = load_model(spec).model
    named = dict(model.named_parameters(remove_duplicate=False))
    assert named[alias] is named[stored]  # one Parameter again, not two copies
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        a, b = original(input_ids=ids), model(input_ids=ids)
    key = "logits" if "logits" in a else "last_hidden_state"
    assert torch.equal(a[key], b[key])


def test_a_missing_key_that_is_no_alias_is_still_an_error(tmp_path):
    state = zoo.tiny_convnext().state_dict()
    del state["features.1.0.layer_scale"]
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    spec = _spec(path, "tiny_convnext", {"x": {"shape": [1, 3, 32, 32]}})
    with pytest.raises(CheckpointError, match=r"missing keys.*features\.1\.0\.layer_scale"):
        load_model(spec)


def test_mnasnet_state_dict_without_metadata_loads(tmp_path):
    original = zoo.mnasnet()
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(original.state_dict(), str(path))  # no _metadata in the file
    spec = _spec(path, "mnasnet", {"x": {"shape": [1, 3, 32, 32]}})
    model = load_model(spec).model
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
