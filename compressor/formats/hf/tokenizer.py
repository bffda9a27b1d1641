"""A Hugging Face model's tokenizer: its text (for rewriting after vocabulary pruning), a
callable that tokenises to fixed-length tensors, and the tokenizer files written beside an
exported model."""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from compressor.data.tokenization import tokenizer_callable
from compressor.files.atomic import write_text_atomic
from compressor.formats.hf.model import DEFAULT_SEQ_LEN, HFModel

# Files of a Hugging Face tokenizer besides tokenizer.json/vocab.txt (copied unchanged).
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def tokenizer_text(model: nn.Module) -> str | None:
    """The ``tokenizer.json`` text that goes with ``model``: the rewritten one after
    vocabulary pruning, else the original folder's, else None."""
    if not isinstance(model, HFModel):
        return None
    if model.tokenizer_json:
        return model.tokenizer_json
    source = model._tokenizer_source
    if source is not None and Path(source).is_file():
        return Path(source).read_text(encoding="utf-8")
    return None


def model_tokenizer(model: nn.Module, max_length: int = DEFAULT_SEQ_LEN):
    """The tokenising callable of ``model``'s own (possibly rewritten) tokenizer, or None."""
    text = tokenizer_text(model)
    if text is None:
        return None
    from tokenizers import Tokenizer  # deferred: extra 'hf'

    return tokenizer_callable(Tokenizer.from_str(text), max_length)


def write_tokenizer_files(model: nn.Module, folder: Path) -> list[str]:
    """Write the model's tokenizer into ``folder``: ``tokenizer.json``, ``vocab.txt`` (for a
    WordPiece vocabulary) and the original's side files (``tokenizer_config.json``,
    ``special_tokens_map.json``). Returns the names written (none without a tokenizer)."""

    text = tokenizer_text(model)
    if text is None:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = ["tokenizer.json"]
    write_text_atomic(folder / "tokenizer.json", text)
    vocab = json.loads(text).get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        ordered = sorted(vocab.items(), key=lambda item: item[1])
        write_text_atomic(folder / "vocab.txt", "".join(f"{tok}\n" for tok, _ in ordered))
        written.append("vocab.txt")
    source = model._tokenizer_source
    for name in TOKENIZER_SIDE_FILES:
        side = Path(source).parent / name if source is not None else None
        if side is not None and side.is_file():
            write_text_atomic(folder / name, side.read_text(encoding="utf-8"))
            written.append(name)
    return written
