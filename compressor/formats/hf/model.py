"""The :class:`HFModel` wrapper around a transformers model (its task, pooling and
normalisation, so that its primary output is what users compare), and helpers every
Hugging Face module shares (the transformers import, the input embedding table)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import CheckpointError

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


DEFAULT_SEQ_LEN = 128


def require_transformers():
    """The transformers module (extra ``hf``), quiet; a clear error when it is missing."""
    try:
        import transformers  # deferred: extra 'hf'
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # compress draws its own progress
        hf_logging.set_verbosity_error()
    except ImportError:
        raise CheckpointError(
            "Hugging Face models need the transformers package",
            hint="pip install 'compress[hf]'",
        ) from None
    return transformers


class HFModel(nn.Module):
    """A transformers model whose forward returns a single tensor."""

    def __init__(self, model: nn.Module, task: str, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        self.model = model
        self.task = task
        self.pooling = pooling
        self.normalize = normalize
        names = inspect.signature(model.forward).parameters
        self.accepts = [n for n in (*TEXT_INPUTS, "pixel_values") if n in names]
        # Set by vocabulary pruning; a plain string attribute, so the manifest carries it.
        self.tokenizer_json: str | None = None
        # Where the original tokenizer lives (private: not part of the manifest).
        self._tokenizer_source: Path | None = None
        # Weights loaded into a resized embedding table: the config must say the new size,
        # or anything that reads config.vocab_size (input specs, HF export) would be wrong.
        self.register_load_state_dict_post_hook(_sync_vocab_size)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "pixel_values": pixel_values,
        }
        kwargs = {k: v for k, v in given.items() if v is not None and k in self.accepts}
        if self.task == "causal-lm":
            # The logits of every position; no KV cache (this forward serves training,
            # evaluation and ONNX export of the full sequence; generation uses the inner model).
            return self.model(**kwargs, use_cache=False).logits
        out = self.model(**kwargs)
        if self.task == "classification":
            return out.logits
        hidden = out.last_hidden_state
        if self.task == "base":
            return hidden
        return pool(hidden, attention_mask, self.pooling, self.normalize)


def input_embedding(model: nn.Module) -> nn.Module | None:
    """The token embedding table of an :class:`HFModel` (or of a bare transformers model)."""
    inner = model.model if isinstance(model, HFModel) else model
    getter = getattr(inner, "get_input_embeddings", None)
    try:
        return getter() if getter is not None else None
    except (NotImplementedError, AttributeError):
        return None


def sync_vocab_size(model: nn.Module) -> None:
    """Make ``config.vocab_size`` agree with the token embedding table's row count."""
    table = input_embedding(model)
    config = getattr(getattr(model, "model", model), "config", None)
    rows = getattr(table, "num_embeddings", None)
    if config is not None and isinstance(rows, int) and getattr(config, "vocab_size", None):
        config.vocab_size = rows


def _sync_vocab_size(module: nn.Module, _incompatible: Any) -> None:
    sync_vocab_size(module)


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, mode: str, normalize: bool):
    """Sentence embedding from token states (sentence-transformers' pooling modes)."""
    if mode == "cls":
        emb = hidden[:, 0]
    else:
        weights = mask if mask is not None else torch.ones(hidden.shape[:2], device=hidden.device)
        weights = weights.unsqueeze(-1).to(hidden.dtype)
        if mode == "max":
            emb = hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(1)
        else:
            emb = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
    return nn.functional.normalize(emb, dim=-1) if normalize else emb
