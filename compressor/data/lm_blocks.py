"""Running text as causal-LM examples: every document tokenised whole, ended with the
end-of-sequence token, the documents joined into one token stream and the stream cut into
consecutive fixed-length blocks (as GPT-2, Llama and Minitron train and evaluate).

An example is ``input_ids`` (and ``attention_mask`` when the model takes one) of ``block``
tokens; its label is the same ids, as transformers' ``labels`` are (the loss and perplexity
shift by one position: position t predicts token t + 1). The last, shorter block is dropped
for training and kept for evaluation, padded, with its padding masked out and labelled
``IGNORE_INDEX``, so that perplexity counts every token of held-out text.

Text sources opt in with ``block=N``: ``builtin:python_docs`` always, a ``.txt``/``.jsonl``/
``.csv`` file with ``?block=256`` (each line, record or row is one document).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from compressor.data.batches import NamedTensorDataset
from compressor.errors import DataError

DEFAULT_BLOCK = 256
IGNORE_INDEX = -100  # the label transformers and torch's cross-entropy skip


def _positive_int(value: Any, key: str, origin: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DataError(f"{origin}: {key} must be an integer, not {value!r}") from None
    if number < 1:
        raise DataError(f"{origin}: {key} must be at least 1, not {number}")
    return number


def token_stream(texts: Sequence[str], tokenizer: Callable, origin: str) -> list[int]:
    """All ``texts`` as one id list, each document as the tokenizer encodes it (with its
    begin-of-sequence token, if it adds one) followed by the end-of-sequence token."""
    stream_ids = getattr(tokenizer, "stream_ids", None)
    eos = getattr(tokenizer, "eos_id", None)
    if stream_ids is None:
        raise DataError(
            f"{origin}: this tokenizer cannot encode whole documents (it only pads and "
            "truncates to a fixed length)",
            hint="use the model folder's tokenizer.json",
        )
    if eos is None:
        raise DataError(
            f"{origin}: the tokenizer has no end-of-sequence token (looked for </s>, "
            "<|endoftext|>, <|end_of_text|>, <eos>)",
            hint="causal-LM blocks end every document with it: add one to tokenizer.json",
        )
    stream: list[int] = []
    for ids in stream_ids(list(texts)):
        stream.extend(ids)
        stream.append(eos)
    return stream


def token_blocks(
    texts: Sequence[str],
    tokenizer: Callable | None,
    layout: Any,
    origin: str,
    *,
    block: Any = DEFAULT_BLOCK,
    limit: Any = None,
    keep_tail: bool = False,
) -> NamedTensorDataset:
    """The documents ``texts`` as consecutive ``block``-token causal-LM examples (the first
    ``limit`` blocks when given); see the module docstring."""
    if tokenizer is None:
        raise DataError(
            f"{origin} is text and needs the model's tokenizer, which is missing",
            hint="use an hf model folder with tokenizer files, or set model.tokenizer",
        )
    size = _positive_int(block, "block", origin)
    if size < 2:
        raise DataError(f"{origin}: block must be at least 2 tokens (one prediction)")
    cap = _positive_int(limit, "limit", origin)
    if "input_ids" not in layout.names:
        raise DataError(
            f"{origin}: token blocks feed input_ids, and the model's inputs are {layout.names}",
            hint="token blocks are for language models that take input_ids",
        )
    stream = torch.tensor(token_stream(texts, tokenizer, origin), dtype=torch.long)
    n = len(stream) // size
    ids = stream[: n * size].view(n, size)
    mask = torch.ones_like(ids)
    rest = stream[n * size :]
    if keep_tail and len(rest) >= 2:
        pad = getattr(tokenizer, "pad_id", None) or 0
        tail = torch.full((1, size), pad, dtype=torch.long)
        tail[0, : len(rest)] = rest
        tail_mask = torch.zeros_like(tail)
        tail_mask[0, : len(rest)] = 1
        ids, mask = torch.cat([ids, tail]), torch.cat([mask, tail_mask])
    if cap is not None:
        ids, mask = ids[:cap], mask[:cap]
    if len(ids) == 0:
        raise DataError(
            f"{origin}: the text is {len(stream)} tokens, less than one block of {size}",
            hint="use a smaller block or more text",
        )
    inputs = {"input_ids": ids}
    if "attention_mask" in layout.names:
        inputs["attention_mask"] = mask
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return NamedTensorDataset(inputs, labels, origin=origin)
