"""A torchvision built for another torch breaks transformers' imports far from the user's
folder; the error says so instead of blaming config.json."""

from __future__ import annotations

import pytest

from compressor.errors import CheckpointError
from compressor.formats.hf import load as hf_load
from compressor.spec.sections import ModelSpec
from tests.unit.export.tiny_lms import tiny_lm


def _transformers_style_failure() -> Exception:
    # transformers' lazy import wraps the RuntimeError torchvision raises at import time.
    try:
        try:
            raise RuntimeError("operator torchvision::nms does not exist")
        except RuntimeError as inner:
            raise ModuleNotFoundError("Could not import module 'LlamaConfig'.") from inner
    except ModuleNotFoundError as outer:
        return outer


def test_the_cause_is_found_in_the_chain():
    assert hf_load.broken_torchvision(_transformers_style_failure()) == (
        "operator torchvision::nms does not exist"
    )
    assert hf_load.broken_torchvision(ValueError("bad json")) is None


def test_loading_a_folder_names_torchvision_and_the_fix(tmp_path, monkeypatch):
    tiny_lm("llama").save_pretrained(tmp_path)
    transformers = hf_load.require_transformers()

    def failing(*_a, **_k):
        raise _transformers_style_failure()

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", failing)
    with pytest.raises(CheckpointError) as info:
        hf_load.load_hf_folder(ModelSpec(hf=str(tmp_path)), tmp_path)
    assert "torchvision does not match torch" in info.value.message
    assert "config.json" not in info.value.message
    assert "matches your torch" in info.value.hint
