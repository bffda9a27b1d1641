"""Causal-LM token blocks (``compressor.data.lm_blocks``), ``builtin:python_docs`` and a text
file with ``?block=``, on the committed tiny Llama's real tokenizer: the blocks are the token
stream in order, every document ends with </s>, and the loss and perplexity they feed match
transformers' own."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from compressor.data.batches import InputLayout
from compressor.data.lm_blocks import IGNORE_INDEX, token_blocks
from compressor.data.python_docs import heldout_texts, split, train_texts
from compressor.data.sources import load_source, parse_source
from compressor.data.tokenization import load_tokenizer
from compressor.errors import DataError
from compressor.measure.lm_metrics import perplexity
from compressor.measure.metrics import compute_metric, get_metric
from compressor.training.loop import task_loss

FOLDER = Path(__file__).resolve().parents[3] / "sample_models" / "tiny_llama" / "model"
LAYOUT = InputLayout(
    names=["input_ids", "attention_mask"],
    shapes={"input_ids": (16,), "attention_mask": (16,)},
    dtypes={"input_ids": torch.int64, "attention_mask": torch.int64},
)
DOCS = [
    "Lists are mutable sequences, typically used to store collections of items.",
    "A tuple is an immutable sequence. " * 12,
    "Sets hold unique elements.",
]


@pytest.fixture(scope="module")
def tokenizer():
    # max_length 8: the fixed-length callable truncates; whole documents must not be.
    return load_tokenizer(FOLDER, max_length=8)


def _stream(tokenizer, docs):
    ids = []
    for doc in docs:
        ids += tokenizer.stream_ids([doc])[0] + [tokenizer.eos_id]
    return ids


def test_blocks_are_the_whole_token_stream_in_order(tokenizer):
    data = token_blocks(DOCS, tokenizer, LAYOUT, "docs", block=16)
    stream = _stream(tokenizer, DOCS)
    assert len(stream) > 3 * 16  # documents longer than the callable's 8 tokens stay whole
    n = len(stream) // 16
    ids = data.inputs["input_ids"]
    assert ids.shape == (n, 16)
    assert ids.flatten().tolist() == stream[: n * 16]
    assert torch.equal(data.target, ids)  # labels = input_ids, shifted by the loss
    assert bool((data.inputs["attention_mask"] == 1).all())
    assert tokenizer.eos_id == 1 and stream.count(1) == len(DOCS)  # </s> ends every document


def test_the_evaluation_tail_is_padded_masked_and_ignored(tokenizer):
    stream = _stream(tokenizer, DOCS)
    rest = len(stream) % 16
    assert rest >= 2
    data = token_blocks(DOCS, tokenizer, LAYOUT, "docs", block=16, keep_tail=True)
    mask, labels = data.inputs["attention_mask"][-1], data.target[-1]
    assert int(mask.sum()) == rest and bool((labels[rest:] == IGNORE_INDEX).all())
    assert data.inputs["input_ids"][-1, :rest].tolist() == stream[-rest:]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block": "abc"}, "block must be an integer"),
        ({"block": 1}, "at least 2"),
        ({"block": 4096}, "less than one block"),
        ({"block": 16, "limit": 0}, "limit must be at least 1"),
    ],
)
def test_bad_block_options_name_the_option(tokenizer, kwargs, message):
    with pytest.raises(DataError, match=message):
        token_blocks(DOCS, tokenizer, LAYOUT, "docs", **kwargs)


def test_a_model_without_input_ids_is_refused(tokenizer):
    layout = InputLayout(["pixel_values"], {"pixel_values": (3, 8, 8)}, {})
    with pytest.raises(DataError, match="input_ids"):
        token_blocks(DOCS, tokenizer, layout, "docs")


def test_python_docs_splits_by_topic_and_module_without_shared_paragraphs(tokenizer):
    parts = split()
    for source in ("pydoc", "docstrings"):
        assert not set(parts["train"][source]) & set(parts["heldout"][source])
    train = {p for t in train_texts() for p in t.split("\n\n")}
    assert not any(p in train for t in heldout_texts() for p in t.split("\n\n"))
    held = load_source(
        parse_source("builtin:python_docs?split=heldout&block=64&sources=pydoc"),
        LAYOUT,
        tokenizer=tokenizer,
    )
    assert held.inputs["input_ids"].shape[1] == 64
    # Held-out keeps its padded tail: every token of the held-out topics is there, once.
    stream = _stream(tokenizer, heldout_texts(["pydoc"]))
    real = held.inputs["attention_mask"].bool()
    assert held.inputs["input_ids"][real].tolist() == stream


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("split=test", "split must be train or heldout"),
        ("sources=pydoc,wiki", "not 'wiki'"),
        ("blocks=64", "unknown option 'blocks'"),
    ],
)
def test_python_docs_options_are_checked(tokenizer, query, message):
    with pytest.raises(DataError, match=message):
        load_source(parse_source(f"builtin:python_docs?{query}"), LAYOUT, tokenizer=tokenizer)


def test_a_text_file_with_block_becomes_lm_blocks(tokenizer, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(DOCS) + "\n")
    data = load_source(parse_source(f"{path}?block=16"), LAYOUT, tokenizer=tokenizer)
    assert data.inputs["input_ids"].flatten().tolist() == _stream(tokenizer, DOCS)[: 16 * len(data)]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text('{"text": "a b c d e", "label": 1}\n')
    with pytest.raises(DataError, match="has labels"):
        load_source(parse_source(f"{labelled}?block=16"), LAYOUT, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def llama():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(FOLDER).eval()


def test_causal_task_loss_is_transformers_own_loss(llama, tokenizer):
    data = token_blocks(DOCS, tokenizer, LAYOUT, "docs", block=16, keep_tail=True)
    ids, mask = data.inputs["input_ids"], data.inputs["attention_mask"]
    with torch.no_grad():
        out = llama(input_ids=ids, attention_mask=mask, labels=data.target)
        ours = task_loss(out.logits, data.target, causal=True)
        unshifted = task_loss(out.logits, data.target)
    assert float(ours) == pytest.approx(float(out.loss), rel=1e-5)
    assert float(unshifted) > float(ours) + 1  # predicting the current token is not the task


def test_registered_perplexity_on_blocks_matches_the_streaming_one(llama, tokenizer):
    data = token_blocks(DOCS * 3, tokenizer, LAYOUT, "docs", block=16, keep_tail=True)
    ids, mask = data.inputs["input_ids"], data.inputs["attention_mask"]
    batches = [
        (ids[i : i + 4], mask[i : i + 4], data.target[i : i + 4]) for i in range(0, len(ids), 4)
    ]
    metric = get_metric("perplexity")
    with torch.no_grad():
        logits = [llama(input_ids=i, attention_mask=m).logits for i, m, _ in batches]
    kept = [metric.keep(lg, t) for lg, (_, _, t) in zip(logits, batches, strict=True)]
    assert kept[0].shape == (4, 15)  # one float per predicted position
    value = compute_metric(metric, kept, [t for *_, t in batches], kept=True)
    want = perplexity(llama, [{"input_ids": i, "attention_mask": m} for i, m, _ in batches])
    assert value == pytest.approx(want, rel=1e-5)
    assert math.isfinite(value) and value < 4096  # a trained model beats uniform guessing
