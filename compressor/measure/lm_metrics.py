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

from compressor.data.lm_blocks import IGNORE_INDEX
from compressor.errors import DataError
from compressor.forward import primary_output


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
#
# The registered metrics see one batch at a time first (``compact_*``): (N, T, vocab) logits
# shrink to one number per position, so an evaluation set of any size and vocabulary is kept
# as (N, T) tensors, never as concatenated logits. The ``*_from_compact`` functions then
# reduce the whole set.


def _check_lm_shapes(logits: torch.Tensor, labels: torch.Tensor | None) -> None:
    if labels is None or logits.dim() != 3 or labels.shape != logits.shape[:2]:
        got = None if labels is None else list(labels.shape)
        raise DataError(
            f"perplexity needs (N, T, vocab) logits and (N, T) token-id labels; got logits "
            f"{list(logits.shape)} and labels {got}",
            hint="use metric perplexity with a causal LM on token blocks (e.g. "
            "builtin:python_docs, or a .txt file with ?block=256): labels = input_ids",
        )


def compact_nll(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Per-position next-token negative log-likelihood (N, T - 1); NaN where the next label
    is ``IGNORE_INDEX`` (padding)."""
    _check_lm_shapes(logits, labels)
    target = labels[:, 1:].long().to(logits.device)
    nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2),
        target.clamp_min(0),
        reduction="none",
    )
    return nll.masked_fill(target == IGNORE_INDEX, float("nan")).cpu()


def perplexity_from_compact(
    nll: torch.Tensor, _labels: torch.Tensor | None, _teacher: torch.Tensor | None = None
) -> float:
    """exp of the mean of the per-position losses of :func:`compact_nll` (token-weighted)."""
    real = nll[~torch.isnan(nll)]
    if real.numel() == 0:
        raise DataError("perplexity: no token to predict", hint="give non-empty token blocks")
    return math.exp(float(real.double().mean()))


def compact_argmax(logits: torch.Tensor, _labels: torch.Tensor | None) -> torch.Tensor:
    """The greedy next token at every position, (N, T), as float (ids below 2**24 are exact),
    with the vocabulary size appended as a last column so vocabularies can be compared."""
    if logits.dim() < 2:
        raise DataError(
            f"next_token_agreement needs (N, T, vocab) logits, got {list(logits.shape)}",
            hint="use it with a causal LM",
        )
    top = logits.argmax(-1).float()
    vocab = torch.full((*top.shape[:-1], 1), float(logits.shape[-1]))
    return torch.cat([top.cpu(), vocab], dim=-1)


def agreement_from_compact(
    student: torch.Tensor, labels: torch.Tensor | None, teacher: torch.Tensor | None
) -> float:
    """Share of real positions (labels not ``IGNORE_INDEX``) whose greedy token equals the
    teacher's, from :func:`compact_argmax` of both."""
    if teacher is None or teacher.shape != student.shape:
        raise DataError(
            "next_token_agreement needs the teacher's logits of the same shape",
            hint="set teacher: original",
        )
    s_vocab, t_vocab = int(student[..., -1].flatten()[0]), int(teacher[..., -1].flatten()[0])
    if s_vocab != t_vocab:
        raise DataError(
            f"next_token_agreement: student vocabulary {s_vocab} != teacher {t_vocab}",
            hint="compare models that share a tokenizer (vocabulary pruning remaps ids)",
        )
    hit = student[..., :-1] == teacher[..., :-1]
    if labels is not None and labels.shape == hit.shape:
        keep = labels != IGNORE_INDEX
        return int((hit & keep).sum()) / max(int(keep.sum()), 1)
    return int(hit.sum()) / max(hit.numel(), 1)
