"""Fixtures of the MiniLM / Hugging Face tests (tiny models built offline, see ``tiny``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.hf_minilm.tiny import write_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny sentence-transformers BERT folder (random weights, WordPiece tokenizer)."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert") / "model")
