"""Calling a model on named inputs, picking its primary output, and moving or resizing a
batch (device, batch size, sequence length): what every layer does with a model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import StageError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


def call_model(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> Any:
    """Run ``model`` on named inputs (``forward(**inputs)``)."""
    return model(**inputs)


def primary_output(output: Any) -> torch.Tensor:
    """The tensor that metrics, distillation and export compare.

    A tensor is itself; a tuple/list gives its first tensor; a mapping (or a Hugging Face
    ``ModelOutput``) gives ``logits``, else ``sentence_embedding``, else
    ``last_hidden_state``, else its first tensor value.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) or hasattr(output, "keys"):
        for key in ("logits", "sentence_embedding", "last_hidden_state"):
            value = output.get(key) if hasattr(output, "get") else None
            if isinstance(value, torch.Tensor):
                return value
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    if isinstance(output, (tuple, list)):
        for value in output:
            if isinstance(value, torch.Tensor):
                return value
            if isinstance(value, (tuple, list, Mapping)):
                return primary_output(value)
    raise StageError(
        f"the model returned {type(output).__name__}, which holds no tensor compress can use",
        hint="make forward() return a tensor, a tuple whose first item is a tensor, or a dict "
        "with 'logits'",
    )


def is_causal_lm(model: nn.Module) -> bool:
    """True for a causal language model (a ``causal-lm`` task or a transformers
    ``*ForCausalLM``): its logits at position t predict token t + 1, so a loss against
    ``labels = input_ids`` must shift by one."""
    if getattr(model, "task", None) == "causal-lm":
        return True
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(inputs: Mapping[str, torch.Tensor], device: torch.device | str) -> dict:
    return {k: v.to(device) for k, v in inputs.items()}


def resize_batch(inputs: Mapping[str, torch.Tensor], batch_size: int) -> dict[str, torch.Tensor]:
    """Repeat or cut example inputs along the batch axis to ``batch_size`` rows."""
    out = {}
    for name, tensor in inputs.items():
        n = tensor.shape[0]
        reps = -(-batch_size // n)
        out[name] = tensor.repeat(reps, *([1] * (tensor.dim() - 1)))[:batch_size].contiguous()
    return out


def resize_sequence(inputs: Mapping[str, torch.Tensor], seq_len: int) -> dict[str, torch.Tensor]:
    """Repeat or cut rank-2 integer inputs (token ids, masks) along the sequence axis."""
    out = {}
    for name, tensor in inputs.items():
        if tensor.dim() == 2 and not tensor.is_floating_point():
            n = tensor.shape[1]
            reps = -(-seq_len // n)
            out[name] = tensor.repeat(1, reps)[:, :seq_len].contiguous()
        else:
            out[name] = tensor
    return out
