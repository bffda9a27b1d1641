"""Token-replacement augmentation for distilling text models on little data.

A student distilled on a thousand sentences copies its teacher closely on those sentences and
less closely on others (measured on MiniLM: 0.989 cosine on the training text, 0.946 on
held-out topics, lowest on sentences with words the training text never shows). The teacher
can label any input, so the training text is extended with altered copies, as TinyBERT does:
each real token is replaced, with probability ``replace``, by one of its ``neighbours``
nearest tokens in the model's own input-embedding table (cosine), standing in for TinyBERT's
GloVe neighbours. The copies keep the sentences' shape and most of their words, and bring in
related words and new contexts the student would otherwise never see.

Special tokens (``[CLS]``, ``[SEP]``, padding, ``[unusedN]``) are never replaced nor used as
replacements. The copies are made once, with a seed, so a teacher cache covers them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from compressor.data.batches import NamedTensorDataset
from compressor.data.padding import token_mask
from compressor.errors import StageError
from compressor.spec.base import StrictModel


class AugmentConfig(StrictModel):
    copies: int = Field(1, ge=1, le=16, description="Altered copies per training example.")
    replace: float = Field(
        0.15, gt=0, le=1, description="Chance that a real token of a copy is replaced."
    )
    neighbours: int = Field(
        10, ge=1, le=100, description="Replace by one of this many nearest tokens."
    )


def input_embedding_table(model: nn.Module) -> torch.Tensor:
    """The token-embedding weights the model reads ``input_ids`` through."""
    inner = getattr(model, "model", model)
    get = getattr(inner, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if embedding is None:
        found = [m for m in model.modules() if isinstance(m, nn.Embedding)]
        embedding = max(found, key=lambda m: m.num_embeddings) if found else None
    weight = getattr(embedding, "weight", None)
    if weight is None or weight.dim() != 2:
        raise StageError(
            "distill.augment replaces tokens by their neighbours in the model's token "
            "embedding table, and this model has none",
            hint="remove augment for this model",
        )
    return weight.detach().float().cpu()


def replaceable_ids(tokenizer: dict[str, Any] | None, vocab_size: int) -> torch.Tensor:
    """A boolean mask over ids: True for ordinary tokens (not special, not ``[...]``)."""
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    if tokenizer is None:
        return allowed
    for token in tokenizer.get("added_tokens") or []:
        if 0 <= int(token["id"]) < vocab_size:
            allowed[int(token["id"])] = False
    vocab = (tokenizer.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        for text, i in vocab.items():
            if text.startswith("[") and text.endswith("]") and 0 <= i < vocab_size:
                allowed[i] = False
    return allowed


def nearest_tokens(table: torch.Tensor, ids: torch.Tensor, k: int, allowed: torch.Tensor):
    """The ``k`` allowed tokens nearest (cosine) to each of ``ids``: ``(len(ids), k)``."""
    k = min(k, int(allowed.sum()) - 1)
    if k < 1:
        raise StageError("distill.augment: the vocabulary has too few ordinary tokens")
    unit = F.normalize(table, dim=1)
    found = [torch.empty(0, k, dtype=torch.long)]
    for chunk in ids.split(1024):  # (1024 x vocab) similarities at a time
        sims = unit[chunk] @ unit.T
        sims[:, ~allowed] = -2.0
        sims[torch.arange(len(chunk)), chunk] = -2.0  # a token is not its own neighbour
        found.append(sims.topk(k, dim=1).indices)
    return torch.cat(found)


def token_data(dataset: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(inputs, attention mask)`` of a token dataset.

    Raises:
        StageError: the data are not token ids with an attention mask.
    """
    inputs = getattr(dataset, "inputs", None)
    mask = token_mask(inputs) if isinstance(inputs, dict) else None
    if mask is None or "input_ids" not in inputs:
        raise StageError(
            "distill.augment needs token data (input_ids and attention_mask)",
            hint="remove augment, or distil on text data",
        )
    return inputs, mask


def augment_tokens(
    dataset: Any,
    table: torch.Tensor,
    cfg: AugmentConfig,
    *,
    seed: int,
    allowed: torch.Tensor | None = None,
) -> tuple[NamedTensorDataset, dict[str, Any]]:
    """The dataset followed by ``cfg.copies`` altered copies of every example, and a report.

    Raises:
        StageError: the data are not token ids with an attention mask.
    """
    inputs, mask = token_data(dataset)
    ids = inputs["input_ids"]
    vocab_size = table.shape[0]
    allowed = torch.ones(vocab_size, dtype=torch.bool) if allowed is None else allowed
    generator = torch.Generator().manual_seed(seed)
    present = ids[mask].unique()
    present = present[(present < vocab_size) & allowed[present.clamp(max=vocab_size - 1)]]
    near = nearest_tokens(table, present, cfg.neighbours, allowed)
    neighbours = near.shape[1]  # fewer when the vocabulary is small
    position = torch.full((vocab_size,), -1, dtype=torch.long)
    position[present] = torch.arange(len(present))
    eligible = mask & (position[ids.clamp(0, vocab_size - 1)] >= 0)
    parts = {name: [value] for name, value in inputs.items()}
    replaced = 0
    for _ in range(cfg.copies):
        pick = eligible & (torch.rand(ids.shape, generator=generator) < cfg.replace)
        choice = torch.randint(0, neighbours, ids.shape, generator=generator)
        altered = ids.clone()
        altered[pick] = near[position[ids[pick]], choice[pick]]
        replaced += int(pick.sum())
        for name, value in inputs.items():
            parts[name].append(altered if name == "input_ids" else value)
    # Altered sentences keep no label (it may no longer hold): the teacher alone teaches.
    augmented = NamedTensorDataset({name: torch.cat(value) for name, value in parts.items()})
    report = {
        "examples": {"before": len(ids), "after": len(augmented)},
        "tokens_replaced": replaced,
        "share_replaced": round(replaced / max(1, int(eligible.sum()) * cfg.copies), 4),
        "labels_dropped": getattr(dataset, "target", None) is not None,
    }
    return augmented, report
