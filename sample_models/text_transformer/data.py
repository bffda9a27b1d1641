"""Real English text for the sample classifier: paragraphs of Python's own documentation
(``pydoc_data.topics``), labelled with the topic they come from.

The eight topics with the most paragraphs are the classes; paragraphs are split 80/20
per topic with a fixed seed. ``load(split)`` is a plan data source
(``sample_models.text_transformer.data:load?split=train``).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch

from compressor.data.batches import NamedTensorDataset

HERE = Path(__file__).parent
TOPICS = (
    "compound",
    "specialnames",
    "types",
    "string-methods",
    "debugger",
    "typesseq",
    "typesmapping",
    "formatstrings",
)
MAX_LEN = 64


def paragraphs() -> dict[str, list[tuple[str, int]]]:
    """``{"train": [(text, label)], "test": [...]}``, deterministic."""
    from pydoc_data.topics import topics

    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for label, topic in enumerate(TOPICS):
        paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", topics[topic])]
        paras = [p for p in paras if len(p.split()) >= 8]
        random.Random(label).shuffle(paras)
        cut = int(len(paras) * 0.8)
        splits["train"] += [(p, label) for p in paras[:cut]]
        splits["test"] += [(p, label) for p in paras[cut:]]
    return splits


def tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(HERE / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=MAX_LEN)
    tok.enable_truncation(MAX_LEN)
    return tok


def encode(texts: list[str]) -> torch.Tensor:
    return torch.tensor([e.ids for e in tokenizer().encode_batch(texts)], dtype=torch.long)


def load(split: str = "train") -> NamedTensorDataset:
    """The ``split`` ("train" or "test") as token ids plus topic labels."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, not {split!r}")
    items = paragraphs()[split]
    ids = encode([t for t, _ in items])
    labels = torch.tensor([y for _, y in items], dtype=torch.long)
    return NamedTensorDataset({"input_ids": ids}, labels)
