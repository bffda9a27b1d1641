"""Bytes on disk of the models a report compares: the original's files, and what a plain
safetensors save of a model would weigh (the size basis every ratio uses)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

# Through the module: replacing safetensors' functions (tests simulating a full disk)
# must reach every writer.
import safetensors.torch
import torch.nn as nn

from compressor.formats.compacted import dedupe_state, save_compressed

SAFETENSORS_NAME = "model.safetensors"


def reference_sizes(ctx: Any, model: nn.Module | None = None) -> dict[str, int]:
    """Bytes on disk of the original: its checkpoint as given, and the same safetensors
    writer's output (the like-for-like basis of the size ratio)."""

    model = model if model is not None else ctx.original
    sizes: dict[str, int] = {}
    path = Path(ctx.loaded.path)
    if path.is_file():
        sizes["checkpoint"] = path.stat().st_size
    elif path.is_dir():
        sizes["checkpoint"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if model is None:
        return sizes
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / SAFETENSORS_NAME
        if ctx.loaded.architecture is not None:
            saved = save_compressed(
                model, target, architecture=ctx.loaded.architecture, manifest=[]
            )
            sizes["safetensors"] = saved.size_bytes
        else:
            sizes["safetensors"] = plain_safetensors_size(model, target)
    return sizes


def plain_safetensors_size(model: nn.Module, target: Path) -> int:

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    unique, _ = dedupe_state(state)
    safetensors.torch.save_file(unique, str(target))
    return target.stat().st_size
