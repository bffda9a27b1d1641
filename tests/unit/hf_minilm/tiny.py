"""A tiny BERT sentence-embedding folder built offline: random weights, a WordPiece tokenizer
made with the ``tokenizers`` library, and a sentence-transformers mean-pooling config."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = [
    "the",
    "a",
    "of",
    "is",
    "to",
    "in",
    "and",
    "value",
    "list",
    "object",
    "function",
    "returns",
    "new",
    "name",
    "class",
    "method",
    "error",
    "raise",
    "string",
    "number",
]
PIECES = ["un", "##able", "##s", "##ed", "##ing", "call", "##er", "read", "write", "##ly"]
CHARS = [c for c in "abcdefghijklmnopqrstuvwxyz.,"] + [
    f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tokenizer(vocab_tokens: list[str]):
    """A BERT-style WordPiece tokenizer (lower-casing, punctuation split, [CLS] ... [SEP])."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(vocab_tokens)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIALS)
    return tok


def write_tiny_bert(folder: Path, *, seed: int = 0, layers: int = 2) -> Path:
    """A sentence-transformers style folder: config, weights, tokenizer, mean pooling."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    tokens = list(dict.fromkeys(SPECIALS + WORDS + PIECES + CHARS))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(str(folder))
    build_tokenizer(tokens).save(str(folder / "tokenizer.json"))
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        )
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": True})
    )
    (folder / "special_tokens_map.json").write_text(json.dumps({"unk_token": "[UNK]"}))
    return folder


def load_tiny(folder: Path, seq_len: int = 16):
    """(LoadedModel, tokenize) of the tiny folder through compress's own loader."""
    from compressor.formats.hf.load import load_hf_folder
    from compressor.spec.sections import ModelSpec

    spec = ModelSpec(
        hf=str(folder),
        inputs={
            "input_ids": {"shape": [1, seq_len], "dtype": "int64", "low": 0, "high": 20},
            "attention_mask": {"shape": [1, seq_len], "dtype": "int64", "low": 1, "high": 2},
            "token_type_ids": {"shape": [1, seq_len], "dtype": "int64", "low": 0, "high": 1},
        },
    )
    loaded = load_hf_folder(spec, folder)
    return loaded, loaded.tokenizer
