"""builtin:pydoc and builtin:docstrings: prose only, a deterministic split by topic with no
shared sentences, and tokenised datasets whose padding is trimmed."""

from __future__ import annotations

import pytest
import torch

from compressor.data import text as T
from compressor.data.batches import InputLayout
from compressor.data.sources import BUILTINS, parse_source
from compressor.errors import DataError
from compressor.spec.sections import InputSpec


def test_split_is_by_topic_deterministic_and_disjoint():
    sizes = {name: len(T.prose_sentences(text)) for name, text in T.pydoc_topics().items()}
    train, held = T.split_topics(sizes)
    assert (train, held) == T.split_topics(dict(reversed(sizes.items())))
    assert not set(train) & set(held) and set(train) | set(held) == set(sizes)
    share = sum(sizes[n] for n in held) / sum(sizes.values())
    assert 0.2 <= share < 0.5
    assert T.split_topics(sizes, seed=1)[1] != held  # the seed chooses other topics
    train_s, held_s = T.pydoc_sentences("train"), T.pydoc_sentences("heldout")
    assert len(train_s) > 1000 and len(held_s) > 200
    assert not set(train_s) & set(held_s)  # pydoc repeats paragraphs across topics
    assert T.pydoc_sentences("heldout") == held_s


def test_prose_extraction_drops_headings_code_and_fragments():
    text = (
        "The assert statement\n*********************\n\n"
        "Assert statements are a convenient way to insert checks. They can be\n"
        "switched off with -O.\n\n"
        '   assert_stmt ::= "assert" expression\n\n'
        ">>> assert 1\n\nToo short."
    )
    assert T.prose_sentences(text) == [
        "Assert statements are a convenient way to insert checks.",
        "They can be switched off with -O.",
    ]


def test_docstrings_are_another_kind_of_text():
    ood = T.docstring_sentences()
    assert len(ood) > 500
    assert not set(ood) & set(T.pydoc_sentences("all"))


def test_sample_is_seeded_and_ordered():
    items = [str(i) for i in range(100)]
    assert T.sample(items, 10, 0) == T.sample(items, 10, 0) != T.sample(items, 10, 1)
    assert T.sample(items, None, 0) == items


def _tokenize(texts):
    # A stand-in tokenizer: one id per word between [CLS]=2 and [SEP]=3, padded to 16.
    ids = torch.zeros(len(texts), 16, dtype=torch.long)
    for i, t in enumerate(texts):
        row = [2, *[5 + len(w) for w in t.split()][:14], 3]
        ids[i, : len(row)] = torch.tensor(row)
    mask = (ids != 0).long()
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _layout():
    spec = InputSpec(shape=[1, 16], dtype="int64")
    return InputLayout.from_specs({"input_ids": spec, "attention_mask": spec})


def test_builtins_tokenise_and_trim_padding():
    ref = parse_source("builtin:pydoc?split=heldout&limit=40&max_length=8")
    source = BUILTINS[ref.target]
    assert source.needs_tokenizer
    ds = source(ref.options, _layout(), _tokenize)
    assert len(ds) == 40 and set(ds.inputs) == {"input_ids", "attention_mask"}
    ids = ds.inputs["input_ids"]
    assert ids.shape == (40, 8)
    long_rows = (
        _tokenize(T.sample(T.pydoc_sentences("heldout"), 40, 0))["attention_mask"].sum(1) > 8
    )
    assert (ids[long_rows, -1] == 3).all()  # a cut sentence still ends with its [SEP]
    ood = BUILTINS["docstrings"]({"limit": "5"}, _layout(), _tokenize)
    assert ood.inputs["input_ids"].shape[1] <= 16


def test_text_builtins_refuse_bad_options():
    with pytest.raises(DataError, match="tokenizer"):
        BUILTINS["pydoc"]({}, _layout(), None)
    with pytest.raises(DataError, match="split"):
        BUILTINS["pydoc"]({"split": "test"}, _layout(), _tokenize)
    with pytest.raises(DataError, match="limit"):
        BUILTINS["pydoc"]({"limit": "x"}, _layout(), _tokenize)


def test_word_windows_add_seeded_spans_of_the_same_topics():
    base = T.pydoc_sentences("train")
    more = T.pydoc_sentences("train", windows=1)
    assert more[: len(base)] == base and len(more) > 1.5 * len(base)
    assert more == T.pydoc_sentences("train", windows=1)
    held = set(T.pydoc_sentences("heldout"))
    assert not held & set(more)
    spans = T.word_windows(["one two three four five six seven eight"], 3, "t", 0, shortest=3)
    assert len(spans) == 3 and all(3 <= len(s.split()) <= 8 for s in spans)
