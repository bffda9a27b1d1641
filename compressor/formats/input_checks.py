"""Example inputs checked against what the model can take, before any work.

A token sequence longer than the position table, or token ids beyond the vocabulary, make
the first forward pass fail deep inside ``F.embedding`` with ``IndexError: index out of
range in self``. The tables are visible on the model itself, so the plan's inputs are
checked against them when the model is loaded and the user is told which field to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from compressor.errors import PlanError
from compressor.forward import TORCH_DTYPES

# Integer inputs that index the token table, and the ones whose length is the sequence.
_TOKEN_INPUTS = ("input_ids", "x", "ids", "tokens", "token_ids")


def position_limit(model: nn.Module) -> tuple[str, int] | None:
    """The longest sequence the model's learned position table allows (name, length).

    RoBERTa-style tables start counting after the padding index (positions are
    ``padding_idx + 1 ...``), so they hold ``num_embeddings - padding_idx - 1`` positions.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.endswith("position_embeddings"):
            pad = module.padding_idx
            usable = module.num_embeddings - (pad + 1 if pad is not None else 0)
            return name, usable
    return None


def _token_table(model: nn.Module) -> tuple[str, int] | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.endswith(
            ("word_embeddings", "embed_tokens", "wte", "shared")
        ):
            return name, module.num_embeddings
    return None


def _get(spec: Any, key: str, default: Any = None) -> Any:
    return spec.get(key, default) if isinstance(spec, Mapping) else getattr(spec, key, default)


def check_inputs_fit(model: nn.Module, specs: Mapping[str, Any], *, what: str = "model") -> None:
    """Refuse example inputs the model's position table or vocabulary cannot take.

    Raises:
        PlanError: naming the input, its shape or range, the table and the fix.
    """
    tokens = {
        name: spec
        for name, spec in specs.items()
        if not TORCH_DTYPES.get(
            _get(spec, "dtype", "float32"), TORCH_DTYPES["float32"]
        ).is_floating_point
        and len(_get(spec, "shape", ())) == 2
    }
    if not tokens:
        return
    positions = position_limit(model)
    if positions is not None:
        table, limit = positions
        for name, spec in tokens.items():
            length = _get(spec, "shape")[1]
            if length > limit:
                raise PlanError(
                    f"{what}.inputs.{name}: sequence length {length} is longer than "
                    f"the model's position table {table} ({limit} positions)",
                    hint=f"set {what}.inputs.{name}.shape to [batch, {limit}] or less",
                )
    vocab = _token_table(model)
    if vocab is not None:
        table, size = vocab
        for name, spec in tokens.items():
            if name not in _TOKEN_INPUTS:
                continue
            high = _get(spec, "high")
            if high is not None and int(high) > size:
                raise PlanError(
                    f"{what}.inputs.{name}: token ids up to {int(high) - 1} but the "
                    f"vocabulary {table} has {size} entries",
                    hint=f"set {what}.inputs.{name}.high to {size} or less",
                )
