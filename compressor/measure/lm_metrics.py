"""Quality of causal language models: perplexity on held-out text and next-token agreement
with a teacher.

Both stream over token blocks (one forward per block, nothing concatenated), so they work at
any vocabulary size. A block is a (batch, length) or (length,) tensor of token ids, or a
mapping with ``input_ids`` and optionally ``attention_mask`` (0 marks padding, which is
neither predicted nor used as context). Position t's logits predict token t + 1.

The ``*_from_logits`` functions are the same figures on logits already computed, in the
shape :mod:`compressor.measure.metrics` hands to registered metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.errors import DataError
from compressor.forward import primary_output

IGNORE_INDEX = -100  # the label transformers and torch's cross-entropy skip


def _as_blocks(
    token_blocks: Iterable[Any],
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    for i, block in enumerate(token_blocks):
        mask = None
        if isinstance(block, Mapping):
            if "input_ids" not in block:
                raise DataError(
                    f"token block {i} has no 'input_ids' (keys: {sorted(block)})",
                    hint="give blocks as id tensors or {'input_ids': ..., 'attention_mask': ...}",
                )
            ids, mask = block["input_ids"], block.get("attention_mask")
        else:
            ids = block
        ids = torch.as_tensor(ids)
        if ids.dim() == 1:
            ids = ids[None]
            mask = None if mask is None else torch.as_tensor(mask)[None]
        if ids.dim() != 2 or ids.is_floating_point():
            raise DataError(
                f"token block {i} has shape {list(ids.shape)} ({ids.dtype}); expected integer "
                "token ids of shape (batch, length)",
                hint="tokenize the text into id tensors first",
            )
        if ids.shape[1] < 2:
            raise DataError(
                f"token block {i} has {ids.shape[1]} token(s); at least 2 are needed for one "
                "next-token prediction",
                hint="use longer blocks (e.g. 128 tokens)",
            )
        yield ids, None if mask is None else torch.as_tensor(mask)


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def lm_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, length, vocab) float logits of a causal LM, without building a KV cache."""

    dev = _device(model)
    kwargs: dict[str, Any] = {"input_ids": ids.to(dev)}
    if mask is not None:
        kwargs["attention_mask"] = mask.to(dev)
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kwargs["use_cache"] = False  # a cache is built for nothing here
    return primary_output(model(**kwargs)).float()


def labels_for(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The ids with padded positions set to ``IGNORE_INDEX``."""
    return ids if mask is None else ids.masked_fill(mask == 0, IGNORE_INDEX)


def nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token negative log-likelihoods, number of predicted tokens)."""
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    target = labels[:, 1:].reshape(-1).to(pred.device)
    total = F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return float(total), int((target != IGNORE_INDEX).sum())


@torch.no_grad()
def perplexity(model: nn.Module, token_blocks: Iterable[Any]) -> float:
    """exp(mean next-token negative log-likelihood) of ``model`` over every predicted token
    of every block (token-weighted, not a mean of per-block perplexities).

    Raises:
        DataError: a block is malformed, or no token is predicted at all.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for ids, mask in _as_blocks(token_blocks):
            s, n = nll_sum(lm_logits(model, ids, mask), labels_for(ids, mask))
            total, count = total + s, count + n
    finally:
        model.train(was_training)
    if count == 0:
        raise DataError("perplexity: no token to predict", hint="give non-empty token blocks")
    return math.exp(total / count)


@torch.no_grad()
def next_token_agreement(
    student: nn.Module, teacher: nn.Module, token_blocks: Iterable[Any]
) -> float:
    """Share of predicted positions where the student's greedy next token equals the
    teacher's (1.0 = the student would generate exactly what the teacher generates).

    Raises:
        DataError: a block is malformed, no position is compared, or the vocabularies differ.
    """
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    same, count = 0, 0
    try:
        for ids, mask in _as_blocks(token_blocks):
            s = lm_logits(student, ids, mask)
            t = lm_logits(teacher, ids, mask).to(s.device)
            agree, n = _agreement_counts(s, t, mask)
            same, count = same + agree, count + n
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    if count == 0:
        raise DataError("next_token_agreement: no position to compare", hint="give token blocks")
    return same / count


def _agreement_counts(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None
) -> tuple[int, int]:
    if student.shape[-1] != teacher.shape[-1]:
        raise DataError(
            f"next_token_agreement: student vocabulary {student.shape[-1]} != teacher "
            f"{teacher.shape[-1]}",
            hint="compare models that share a tokenizer (vocabulary pruning remaps ids)",
        )
    hit = student.argmax(-1) == teacher.argmax(-1)
    if mask is None:
        return int(hit.sum()), hit.numel()
    keep = mask.to(hit.device).bool()
    return int((hit & keep).sum()), int(keep.sum())


# ------------------------------------------------------------------ registry adapters


def perplexity_from_logits(
    logits: torch.Tensor, labels: torch.Tensor | None, _teacher: torch.Tensor | None = None
) -> float:
    """Perplexity of (N, T, V) logits against (N, T) token ids (``IGNORE_INDEX`` skipped)."""
    if labels is None or logits.dim() != 3 or labels.shape != logits.shape[:2]:
        got = None if labels is None else list(labels.shape)
        raise DataError(
            f"perplexity needs (N, T, vocab) logits and (N, T) token-id labels; got logits "
            f"{list(logits.shape)} and labels {got}",
            hint="use metric perplexity with a causal LM on token-id data (labels = input_ids)",
        )
    total, count = nll_sum(logits, labels.long())
    if count == 0:
        raise DataError("perplexity: no token to predict", hint="give non-empty token blocks")
    return math.exp(total / count)


def agreement_from_logits(
    logits: torch.Tensor, _labels: torch.Tensor | None, teacher: torch.Tensor | None
) -> float:
    """Share of positions whose argmax equals the teacher's."""
    if teacher is None or teacher.shape[:-1] != logits.shape[:-1]:
        raise DataError(
            "next_token_agreement needs the teacher's logits of the same shape",
            hint="set teacher: original",
        )
    same, count = _agreement_counts(logits, teacher, None)
    return same / max(count, 1)
