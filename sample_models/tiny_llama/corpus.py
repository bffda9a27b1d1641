"""The tiny Llama's text: Python's own documentation split BY TOPIC and BY MODULE (the
library's ``builtin:python_docs``, :mod:`compressor.data.python_docs`, re-exported here), plus
the block chunking and perplexity the training and baseline scripts share (on a Hugging Face
tokenizer and model, where a plan uses ``builtin:python_docs?split=heldout`` and the
``perplexity`` metric).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from compressor.data.python_docs import (  # noqa: F401  (re-exported for the scripts)
    DOCSTRING_HELDOUT,
    PYDOC_HELDOUT,
    SEED,
    SOURCES,
    docstring_documents,
    heldout_texts,
    prose_paragraphs,
    pydoc_documents,
    split,
    train_texts,
)
from compressor.errors import DataError
from compressor.measure.lm_metrics import nll_sum

BLOCK_SIZE = 256

# ------------------------------------------------------------------ tokens and perplexity


def token_stream(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """All ``texts`` as one id list: each document is ``<s> ... </s>`` (the tokenizer adds the
    ``<s>``; the ``</s>`` is appended here so the model learns where a document ends)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tiny_llama corpus: the tokenizer has no eos_token", hint="set eos_token")
    stream: list[int] = []
    for ids in tokenizer(list(texts))["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    return stream


def blocks(tokenizer: Any, texts: Sequence[str], block_size: int = BLOCK_SIZE, tail=True):
    """The token stream of ``texts`` cut into consecutive ``block_size``-token blocks
    (a ``LongTensor`` [n, block_size]); ``tail`` returns the shorter last block separately
    (``(blocks, tail_or_None)``) so that perplexity counts every token, and training
    (``tail=False``) drops it."""
    import torch

    if block_size < 2:
        raise DataError(f"tiny_llama corpus: block_size must be at least 2, not {block_size}")
    stream = torch.tensor(token_stream(tokenizer, texts), dtype=torch.long)
    n = len(stream) // block_size
    full = stream[: n * block_size].view(n, block_size)
    if not tail:
        return full
    rest = stream[n * block_size :]
    return full, (rest.unsqueeze(0) if len(rest) >= 2 else None)


def mean_nll(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    block_size: int = BLOCK_SIZE,
    batch_size: int = 16,
    every: int = 1,
) -> tuple[float, int]:
    """``(mean next-token negative log-likelihood in nats, tokens predicted)`` of ``model``
    over ``texts`` cut into non-overlapping blocks (each block's first token is context only).
    ``every=k`` scores only every k-th full block (and no tail): a cheaper estimate on long
    text such as the whole training set.
    """
    import torch

    full, rest = blocks(tokenizer, texts, block_size)
    if every > 1:
        full, rest = full[::every], None
    batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    if rest is not None:
        batches.append(rest)
    if not batches:
        raise DataError("tiny_llama corpus: no text to measure perplexity on")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for ids in batches:
                ids = ids.to(device)
                s, n = nll_sum(model(input_ids=ids).logits, ids)
                total, count = total + s, count + n
    finally:
        model.train(was_training)
    return total / count, count


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    block_size: int = BLOCK_SIZE,
    batch_size: int = 16,
    every: int = 1,
) -> float:
    """Per-token perplexity, ``exp(mean NLL)``, of a causal LM over ``texts`` (see
    :func:`mean_nll`). Comparable only between models that share the tokenizer."""
    return math.exp(mean_nll(model, tokenizer, texts, block_size, batch_size, every)[0])
