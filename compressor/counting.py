"""The one place that computes a model's size facts: parameters (tied ones once) and MACs
(measured with torch's FLOP counter on real example inputs), for stages, the runner, bench
and inspect alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from compressor.forward import call_model


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (tied parameters counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # parameters() already de-duplicates shared Parameters
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def count_macs(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> int:
    """Multiply-accumulates of one forward pass, from torch's own FLOP counter (FLOPs / 2)."""

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call_model(model, inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def model_facts(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``{"params": ..., "macs": ...}`` of ``model`` on ``inputs``."""
    return {"params": count_params(model), "macs": count_macs(model, inputs)}
