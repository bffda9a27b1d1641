"""The committed tiny Llama (sample_models/tiny_llama/model): a stock Hugging Face folder with
grouped-query attention that learned English, and a held-out split disjoint by topic."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from compressor.data.text import prose_sentences, pydoc_topics, split_topics
from sample_models.tiny_llama import corpus

FOLDER = Path(__file__).resolve().parents[3] / "sample_models" / "tiny_llama" / "model"


@pytest.fixture(scope="module")
def loaded():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(FOLDER)
    return model.eval(), AutoTokenizer.from_pretrained(FOLDER)


def test_folder_is_a_stock_llama_with_grouped_query_attention(loaded):
    model, tokenizer = loaded
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert config.num_hidden_layers == 8 and len(model.model.layers) == 8
    assert config.num_key_value_heads < config.num_attention_heads
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.out_features == config.num_key_value_heads * config.head_dim
    assert attn.q_proj.out_features == config.num_attention_heads * config.head_dim
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<pad>",
    )
    assert len(tokenizer) == config.vocab_size
    size = sum(f.stat().st_size for f in FOLDER.iterdir())
    assert size <= 25_000_000, f"the committed folder is {size} bytes, over the 25 MB budget"


def test_perplexity_of_uniform_logits_is_the_vocabulary_size(loaded):
    # The helper's bookkeeping (tokens counted, blocks and the short tail): a model that
    # knows nothing must score exactly the vocabulary size.
    _, tokenizer = loaded

    class Uniform(torch.nn.Module):
        training = False

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, len(tokenizer))
            return type("Out", (), {"logits": logits})

    texts = ["A short document about lists.", "Another one, about tuples and sets. " * 20]
    nll, count = corpus.mean_nll(Uniform(), tokenizer, texts, block_size=16, batch_size=3)
    stream = corpus.token_stream(tokenizer, texts)
    full, tail = divmod(len(stream), 16)
    assert count == full * 15 + max(0, tail - 1)
    assert math.exp(nll) == pytest.approx(len(tokenizer), rel=1e-5)


def test_split_is_disjoint_by_topic_and_module_and_matches_builtin_pydoc():
    parts = corpus.split()
    for source in corpus.SOURCES:
        train, held = set(parts["train"][source]), set(parts["heldout"][source])
        assert train and held and not train & held, source
    # The same held-out topics as builtin:pydoc, so distilling on its train split never
    # touches the text this model is evaluated on.
    sizes = {n: len(prose_sentences(t)) for n, t in pydoc_topics().items()}
    sizes = {n: c for n, c in sizes.items() if n in corpus.pydoc_documents()}
    assert parts["heldout"]["pydoc"] == split_topics(sizes, 0.2, 0)[1]
    train_paragraphs = {p for t in corpus.train_texts() for p in t.split("\n\n")}
    held = corpus.heldout_texts()
    assert held and not any(p in train_paragraphs for t in held for p in t.split("\n\n"))
    assert corpus.heldout_texts() == held  # deterministic


@pytest.fixture(scope="module")
def heldout_vs_unigram(loaded):
    """``(model's held-out perplexity, unigram perplexity on the same predicted tokens)``."""
    model, tokenizer = loaded
    held = corpus.heldout_texts()
    ppl = corpus.perplexity(model, tokenizer, held)
    # Unigram baseline: training-token frequencies (add-one smoothed) scored on the same
    # held-out tokens (the first of each block excluded, as the model's perplexity does).
    counts = Counter(corpus.token_stream(tokenizer, corpus.train_texts()))
    total = sum(counts.values()) + len(tokenizer)
    full, tail = corpus.blocks(tokenizer, held)
    targets = full[:, 1:].reshape(-1).tolist() + (tail[0, 1:].tolist() if tail is not None else [])
    unigram = math.exp(-sum(math.log((counts[t] + 1) / total) for t in targets) / len(targets))
    assert unigram > 200  # sanity: the bounds below are not trivially loose
    return ppl, unigram


@pytest.mark.slow
def test_heldout_perplexity_is_well_below_unigram_and_vocabulary(loaded, heldout_vs_unigram):
    # A guard against a broken or untrained folder: it must use context (beat a unigram
    # model by 2x) and be far from guessing (a tenth of the vocabulary size).
    ppl, unigram = heldout_vs_unigram
    assert ppl < unigram / 2, f"held-out perplexity {ppl:.1f} vs unigram {unigram:.1f}"
    assert ppl < len(loaded[1]) / 10


@pytest.mark.slow
def test_heldout_perplexity_is_far_below_a_unigram_model(heldout_vs_unigram):
    ppl, unigram = heldout_vs_unigram
    assert ppl < unigram / 4, f"held-out perplexity {ppl:.1f} vs unigram {unigram:.1f}"


@pytest.mark.slow
def test_greedy_generation_is_english_words(loaded):
    from sample_models.tiny_llama.train import samples

    model, tokenizer = loaded
    vocabulary = {w.strip(".,;:()'\"").lower() for t in corpus.train_texts() for w in t.split()}
    text = samples(model, tokenizer, ["The return value of the function is"], new_tokens=30)[0]
    words = [w.strip(".,;:()'\"").lower() for w in text.split()[7:]]
    words = [w for w in words if w]
    assert len(words) >= 10
    known = sum(w in vocabulary for w in words) / len(words)
    assert known >= 0.9, text
