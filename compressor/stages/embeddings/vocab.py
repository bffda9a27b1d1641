"""Vocabulary pruning: keep the token-embedding rows a corpus uses, and rewrite the tokenizer.

The token embedding table is often half of a small language model (MiniLM-L6: 11.7M of 22.7M
parameters), and a deployment that reads one kind of text uses a fraction of its 30,522
tokens. Pruning keeps, in their original order:

* every token the corpus uses (its token ids counted over real positions, not padding),
  optionally only those seen ``min_count`` times, or the ``max_tokens`` most frequent;
* the tokenizer's special and added tokens ([PAD], [UNK], [CLS], [SEP], [MASK]);
* single characters (``a``, ``##a``), so that a word made of dropped pieces is still
  spelled out in kept pieces instead of collapsing into [UNK];
* optionally the first ``keep_first`` ids: BERT-family WordPiece vocabularies list whole
  words roughly by frequency (``the``, ``of``, ``and``, ...), so this keeps the commonest
  English words for text the corpus did not cover (measured: the first 8,000 ids hold about
  45% of the held-out pydoc tokens that the training topics lack).

The kept rows get new contiguous ids, and ``tokenizer.json`` is rewritten to match (WordPiece
vocabulary, added tokens, post-processor ids, padding id). WordPiece matches the longest known
prefix first, so a word whose original pieces were all kept has no longer match in the
smaller vocabulary: text made of kept tokens tokenises into exactly the same token strings, and
the compacted model computes exactly what the original did on it. Other words are split into
kept sub-words (or [UNK]): that is where fidelity can change, and what the stage measures.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import StageError
from compressor.formats.hf.model import HFModel, input_embedding, sync_vocab_size


@dataclass
class VocabChoice:
    """The original ids to keep (ascending) and why each group was kept."""

    kept: list[int]
    size_before: int
    counts: dict[str, int] = field(default_factory=dict)  # corpus / special / chars

    @property
    def size_after(self) -> int:
        return len(self.kept)


def wordpiece_vocab(tokenizer: dict[str, Any]) -> dict[str, int]:
    """The ``{token: id}`` vocabulary of a WordPiece ``tokenizer.json``.

    Raises:
        StageError: the tokenizer is not WordPiece (BPE merges and Unigram scores would need
            their own rewrite, which compress does not do).
    """
    model = tokenizer.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        kind = model.get("type", "unknown")
        raise StageError(
            f"vocabulary pruning rewrites WordPiece tokenizers (BERT family); this one is {kind}",
            hint="remove embeddings.vocab for this model (embeddings.factorize works for any)",
        )
    return model["vocab"]


def special_ids(tokenizer: dict[str, Any]) -> set[int]:
    """Ids of added/special tokens, the unknown token and the padding token."""
    vocab = wordpiece_vocab(tokenizer)
    ids = {int(t["id"]) for t in tokenizer.get("added_tokens") or []}
    for name in (
        tokenizer["model"].get("unk_token"),
        (tokenizer.get("padding") or {}).get("pad_token"),
    ):
        if name in vocab:
            ids.add(vocab[name])
    return ids


def char_ids(vocab: dict[str, int], mode: str) -> set[int]:
    """Ids of single-character pieces (``x`` and ``##x``): all, printable ASCII, or none."""
    if mode == "none":
        return set()
    found = set()
    for token, i in vocab.items():
        char = token[2:] if token.startswith("##") else token
        if len(char) == 1 and (mode == "all" or 32 < ord(char) < 127):
            found.add(i)
    return found


def token_counts(datasets: Iterable[Any], vocab_size: int) -> torch.Tensor:
    """How often each token id occurs at real (unmasked) positions of the datasets' inputs."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for dataset in datasets:
        inputs = getattr(dataset, "inputs", None)
        if inputs is None:  # a generic Dataset: walk it
            items = (dataset[i][0] for i in range(len(dataset)))
        else:
            items = [inputs]
        for x in items:
            ids = torch.as_tensor(x["input_ids"])
            mask = x.get("attention_mask")
            if mask is not None:
                ids = ids[torch.as_tensor(mask).bool()]
            ids = ids.flatten().long()
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
                raise StageError(
                    f"the corpus holds token id {int(ids.max())}, outside the vocabulary of "
                    f"{vocab_size}",
                    hint="tokenise the corpus with the model's own tokenizer",
                )
            counts += torch.bincount(ids, minlength=vocab_size)
    return counts


def choose_tokens(
    counts: torch.Tensor,
    tokenizer: dict[str, Any],
    *,
    min_count: int = 1,
    max_tokens: int | None = None,
    keep_chars: str = "ascii",
    keep_first: int = 0,
) -> VocabChoice:
    """Which original ids survive (see the module docstring)."""
    vocab = wordpiece_vocab(tokenizer)
    size = max(len(counts), max(vocab.values()) + 1)
    specials = special_ids(tokenizer)
    chars = char_ids(vocab, keep_chars) - specials
    # [unused...] placeholders sit among the first ids of BERT vocabularies: never worth a row.
    first = {i for t, i in vocab.items() if i < keep_first and not (t[:1] == "[" and t[-1:] == "]")}
    first -= specials | chars
    always = specials | chars | first
    used = [
        i
        for i in torch.argsort(counts, descending=True, stable=True).tolist()
        if counts[i] >= min_count and i not in always
    ]
    if max_tokens is not None:
        room = max_tokens - len(always)
        if room < 0:
            raise StageError(
                f"max_tokens={max_tokens} is below the {len(always)} special, character and "
                "keep_first tokens that are always kept",
                hint="raise max_tokens, or lower keep_first / set keep_chars: none",
            )
        used = used[:room]
    kept = sorted(always | set(used))
    counts_by = {"corpus": len(used), "special": len(specials), "chars": len(chars)}
    if keep_first:
        counts_by["first"] = len(first)
    return VocabChoice(kept, size, counts_by)


def _remap_processor(processor: dict[str, Any] | None, new_id: dict[int, int]) -> None:
    """Point a post-processor's special-token ids at the new ids (in place)."""
    if not processor:
        return
    kind = processor.get("type")
    if kind == "Sequence":
        for inner in processor.get("processors", []):
            _remap_processor(inner, new_id)
    elif kind == "TemplateProcessing":
        for special in (processor.get("special_tokens") or {}).values():
            special["ids"] = [new_id[i] for i in special.get("ids", [])]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            if key in processor:
                token, old = processor[key]
                processor[key] = [token, new_id[old]]


def rewrite_tokenizer(tokenizer: dict[str, Any], kept: list[int]) -> dict[str, Any]:
    """A copy of ``tokenizer`` (``tokenizer.json`` as a dict) whose vocabulary is the kept
    ids, renumbered 0..n-1 in their original order.

    Raises:
        StageError: a special token the tokenizer needs is not among the kept ids.
    """
    vocab = wordpiece_vocab(tokenizer)
    by_id = {i: t for t, i in vocab.items()}
    new_id = {old: new for new, old in enumerate(kept)}
    missing = sorted(special_ids(tokenizer) - set(kept))
    if missing:
        raise StageError(f"vocabulary pruning must keep the special tokens (ids {missing})")
    out = copy.deepcopy(tokenizer)
    out["model"]["vocab"] = {by_id[old]: new for old, new in new_id.items() if old in by_id}
    out["added_tokens"] = [
        {**t, "id": new_id[int(t["id"])]} for t in tokenizer.get("added_tokens") or []
    ]
    _remap_processor(out.get("post_processor"), new_id)
    padding = out.get("padding")
    if padding and padding.get("pad_token") in out["model"]["vocab"]:
        padding["pad_id"] = out["model"]["vocab"][padding["pad_token"]]
    return out


@torch.no_grad()
def prune_embedding_rows(embedding: nn.Embedding, kept: list[int]) -> None:
    """Keep only the ``kept`` rows of an embedding table, in place (a smaller dense tensor)."""
    if not isinstance(embedding, nn.Embedding):
        raise StageError(
            f"vocabulary pruning needs a plain nn.Embedding token table, found "
            f"{type(embedding).__name__}",
            hint="prune the vocabulary before factorising the embedding table",
        )
    index = torch.as_tensor(kept, dtype=torch.long, device=embedding.weight.device)
    weight = embedding.weight.detach().index_select(0, index).clone()
    embedding.weight = nn.Parameter(weight, requires_grad=embedding.weight.requires_grad)
    if embedding.padding_idx is not None:
        remap = {old: new for new, old in enumerate(kept)}
        embedding.padding_idx = remap.get(embedding.padding_idx)
    embedding.num_embeddings = len(kept)


def prune_vocabulary(model: nn.Module, tokenizer: dict[str, Any], kept: list[int]) -> str:
    """Prune ``model``'s (an ``HFModel``) token table to ``kept`` and give it the rewritten
    tokenizer. Returns the new ``tokenizer.json`` text.

    Raises:
        StageError: the model has no token table, or ties it to an output layer (an LM head
            would lose output classes, which changes what the model predicts).
    """

    table = input_embedding(model)
    if not isinstance(model, HFModel) or table is None:
        raise StageError("vocabulary pruning needs a Hugging Face text model (model.hf)")
    getter = getattr(model.model, "get_output_embeddings", None)
    if getter is not None and getter() is not None:
        raise StageError(
            "this model predicts tokens (it has an output embedding layer); pruning the "
            "vocabulary would remove output classes",
            hint="vocabulary pruning is for encoders: embedding and classification models",
        )
    if max(kept) >= table.num_embeddings:
        raise StageError(
            f"the tokenizer has {max(kept) + 1}+ tokens but the model only "
            f"{table.num_embeddings} embedding rows",
            hint="the tokenizer does not belong to this model",
        )
    new = rewrite_tokenizer(tokenizer, kept)
    prune_embedding_rows(table, kept)
    text = json.dumps(new, ensure_ascii=False)
    model.tokenizer_json = text
    sync_vocab_size(model)
    return text


def dropped_token_share(dataset: Any, kept: list[int]) -> dict[str, float]:
    """On data tokenised by the ORIGINAL tokenizer: the share of real tokens that were
    dropped, and the share of examples with at least one (those may tokenise differently)."""
    inputs = getattr(dataset, "inputs", None)
    if inputs is None or "input_ids" not in inputs:
        return {}
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask", torch.ones_like(ids)).bool()
    keep = torch.zeros(int(ids.max()) + 1, dtype=torch.bool)
    kept_t = torch.as_tensor([k for k in kept if k < len(keep)], dtype=torch.long)
    keep[kept_t] = True
    dropped = ~keep[ids] & mask
    return {
        "tokens_dropped": round(float(dropped.sum()) / max(1, int(mask.sum())), 4),
        "examples_affected": round(float(dropped.any(1).float().mean()), 4),
    }
