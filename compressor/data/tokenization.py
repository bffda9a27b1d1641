"""Tokenizers for text data: a ``tokenizer.json`` (tokenizers library) or a Hugging Face
folder, turned into a callable ``texts -> {input_ids, attention_mask, ...}`` of fixed length."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from compressor.errors import CheckpointError

Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]
# End-of-sequence tokens of common tokenizer families (Llama/Mistral, GPT-2/Qwen, Llama 3, Gemma).
EOS_TOKENS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>")


def load_tokenizer(path: Path, max_length: int) -> Tokenize:
    """Load a tokenizer and return a function that pads/truncates to ``max_length`` tokens."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(
            f"tokenizer {path} not found (expected a tokenizer.json file or a folder holding one)",
            hint="check model.tokenizer",
        )
    try:
        from tokenizers import Tokenizer  # deferred: extra 'hf'
    except ImportError:
        raise CheckpointError(
            "text data needs the tokenizers package", hint="pip install 'compress[hf]'"
        ) from None
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:
        raise CheckpointError(f"tokenizer {file} cannot be read ({e})") from None
    return tokenizer_callable(tok, max_length)


def tokenizer_callable(tok: Any, max_length: int) -> Tokenize:
    """``texts -> {input_ids, attention_mask, token_type_ids}`` padded and truncated to
    ``max_length``, from a ``tokenizers.Tokenizer``."""
    pad_id = tok.token_to_id("[PAD]")
    if pad_id is None:
        pad_id = tok.token_to_id("<pad>")
    # Whole documents (causal-LM token streams) are encoded by an unpadded, untruncated copy.
    whole = type(tok).from_str(tok.to_str())
    whole.no_truncation()
    whole.no_padding()
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=pad_id or 0, length=max_length)

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        encodings = tok.encode_batch(texts)
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
            "token_type_ids": torch.tensor([e.type_ids for e in encodings], dtype=torch.long),
        }

    def stream_ids(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in whole.encode_batch(texts)]

    tokenize.stream_ids = stream_ids  # type: ignore[attr-defined]
    tokenize.eos_id = next(  # type: ignore[attr-defined]
        (i for name in EOS_TOKENS if (i := tok.token_to_id(name)) is not None), None
    )
    tokenize.pad_id = pad_id  # type: ignore[attr-defined]
    return tokenize


def sequence_length(input_specs: dict, default: int = 128) -> int:
    """The token sequence length implied by the model's inputs (``input_ids`` shape)."""
    for name in ("input_ids", *input_specs):
        spec = input_specs.get(name)
        if spec is not None and len(spec.shape) == 2:
            return int(spec.shape[1])
    return default
