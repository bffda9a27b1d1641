"""Vocabulary pruning on a tiny BERT: the same tokens and outputs for text made of kept
tokens, fallback to kept pieces for other words, and a model that reloads and exports."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compressor.errors import StageError
from compressor.formats.hf.tokenizer import model_tokenizer, tokenizer_text, write_tokenizer_files
from compressor.stages.embeddings import vocab as V
from tests.unit.hf_minilm.tiny import load_tiny

CORPUS = ["The value of a list is a new object.", "A function returns the name, and raise."]
KEPT_TEXT = ["a list is the new value", "the object returns a name."]


class _Texts:
    """A dataset-like holder of tokenised inputs (what token_counts reads)."""

    def __init__(self, inputs):
        self.inputs = inputs


def _strings(tok_json: str, texts: list[str]) -> list[list[str]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tok_json)
    return [e.tokens for e in tok.encode_batch(texts)]


@pytest.fixture
def pruned(tiny_bert):
    from compressor.formats.manifest import snapshot

    loaded, tokenize = load_tiny(tiny_bert)
    original = copy.deepcopy(loaded.model)
    before = snapshot(loaded.model)
    tok = json.loads(tokenizer_text(loaded.model))
    counts = V.token_counts([_Texts(tokenize(CORPUS))], len(tok["model"]["vocab"]))
    choice = V.choose_tokens(counts, tok, keep_chars="none")
    V.prune_vocabulary(loaded.model, tok, choice.kept)
    return original, loaded.model, tokenize, choice, before


def test_kept_tokens_tokenise_to_the_same_strings_and_outputs(pruned):
    original, model, tokenize, *_ = pruned
    new_tokenize = model_tokenizer(model, 16)
    before = _strings(tokenizer_text(original), KEPT_TEXT)
    after = _strings(model.tokenizer_json, KEPT_TEXT)
    assert before == after and all("[UNK]" not in tokens for tokens in after)
    with torch.no_grad():
        expected = original(**tokenize(KEPT_TEXT))
        got = model(**new_tokenize(KEPT_TEXT))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_ids_are_contiguous_and_specials_follow(pruned):
    _, model, _, choice, _ = pruned
    tok = json.loads(model.tokenizer_json)
    assert sorted(tok["model"]["vocab"].values()) == list(range(choice.size_after))
    assert model.model.get_input_embeddings().num_embeddings == choice.size_after
    assert model.model.config.vocab_size == choice.size_after
    cls_id = tok["model"]["vocab"]["[CLS]"]
    assert tok["post_processor"]["special_tokens"]["[CLS]"]["ids"] == [cls_id]
    ids = model_tokenizer(model, 8)(["the"])["input_ids"][0].tolist()
    assert ids[0] == cls_id and ids[2] == tok["model"]["vocab"]["[SEP]"]


def test_unknown_words_fall_back_to_kept_characters(tiny_bert):
    loaded, tokenize = load_tiny(tiny_bert)
    tok = json.loads(tokenizer_text(loaded.model))
    counts = V.token_counts([_Texts(tokenize(CORPUS))], len(tok["model"]["vocab"]))
    with_chars = V.choose_tokens(counts, tok, keep_chars="ascii")
    bare = V.choose_tokens(counts, tok, keep_chars="none")
    assert with_chars.counts["chars"] > 0 and bare.size_after < with_chars.size_after
    word = ["unreadable"]  # un ##read... pieces were not in the corpus
    spelled = _strings(json.dumps(V.rewrite_tokenizer(tok, with_chars.kept)), word)[0]
    assert "[UNK]" not in spelled and "".join(t.lstrip("#") for t in spelled[1:-1]) == word[0]
    assert _strings(json.dumps(V.rewrite_tokenizer(tok, bare.kept)), word)[0][1] == "[UNK]"


def test_max_tokens_keeps_the_most_frequent(tiny_bert):
    loaded, tokenize = load_tiny(tiny_bert)
    tok = json.loads(tokenizer_text(loaded.model))
    counts = V.token_counts([_Texts(tokenize(CORPUS * 3 + ["a a a a"]))], 200)
    choice = V.choose_tokens(counts, tok, keep_chars="none", max_tokens=8)
    assert choice.size_after == 8 and tok["model"]["vocab"]["a"] in choice.kept
    with pytest.raises(StageError, match="max_tokens"):
        V.choose_tokens(counts, tok, keep_chars="none", max_tokens=3)


def test_refuses_what_it_cannot_rewrite():
    with pytest.raises(StageError, match="WordPiece"):
        V.wordpiece_vocab({"model": {"type": "BPE", "vocab": {}, "merges": []}})
    tok = {"model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"}}
    with pytest.raises(StageError, match="special"):
        V.rewrite_tokenizer(tok, [1])


def test_dropped_token_share_counts_real_positions_only():
    ids = torch.tensor([[2, 5, 9, 3, 0], [2, 5, 3, 0, 0]])
    mask = (ids != 0).long()
    share = V.dropped_token_share(_Texts({"input_ids": ids, "attention_mask": mask}), [0, 2, 3, 5])
    assert share == {"tokens_dropped": round(1 / 7, 4), "examples_affected": 0.5}


def test_pruned_model_reloads_with_its_tokenizer_and_writes_files(pruned, tmp_path):
    from compressor.formats.compacted import load_compressed, save_compressed
    from compressor.formats.hf.load import hf_architecture
    from compressor.formats.manifest import diff

    original, model, _, choice, before = pruned
    manifest = diff(before, model)
    saved = tmp_path / "model.safetensors"
    save_compressed(model, saved, architecture=hf_architecture(original), manifest=manifest)
    back = load_compressed(saved).model
    assert back.tokenizer_json == model.tokenizer_json
    assert back.model.config.vocab_size == choice.size_after
    tokenize = model_tokenizer(back, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(**tokenize(KEPT_TEXT)), model(**tokenize(KEPT_TEXT)))
    written = write_tokenizer_files(back, tmp_path / "tok")
    assert written[:2] == ["tokenizer.json", "vocab.txt"]
    lines = (tmp_path / "tok" / "vocab.txt").read_text().splitlines()
    assert len(lines) == choice.size_after and lines[0] == "[PAD]"


def test_keep_first_adds_the_first_ids_but_no_placeholders():
    vocab = {"[PAD]": 0, "[unused0]": 1, "[UNK]": 2, "the": 3, "of": 4, "rare": 5, "##x": 6}
    tok = {
        "model": {"type": "WordPiece", "vocab": vocab, "unk_token": "[UNK]"},
        "added_tokens": [{"id": 0, "content": "[PAD]"}, {"id": 2, "content": "[UNK]"}],
    }
    counts = torch.zeros(7)
    counts[5] = 3
    choice = V.choose_tokens(counts, tok, keep_chars="none", keep_first=5)
    assert choice.kept == [0, 2, 3, 4, 5] and choice.counts["first"] == 2
