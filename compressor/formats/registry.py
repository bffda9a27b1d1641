"""What a loaded model is, and which format module loads which kind of model folder.

A format registers its loader when its module is imported (``compressor.formats`` imports
every built-in format), so the generic loader (``compressor.formats.loading``) dispatches by
kind without importing the formats, and a new format is one new module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import CheckpointError
from compressor.formats.architecture import ArchitectureRef

# (model spec, resolved folder path, safe=...) -> LoadedModel
FolderLoader = Callable[..., "LoadedModel"]
_FOLDER_LOADERS: dict[str, FolderLoader] = {}


@dataclass
class LoadedModel:
    """A loaded model plus what the rest of the pipeline needs to know about it."""

    model: nn.Module | None
    # state_dict | training_checkpoint | compressed | pickled_module | hf | torchscript | onnx
    kind: str
    path: Path
    architecture: ArchitectureRef | None
    input_specs: dict[str, Any] = field(default_factory=dict)
    tokenizer: Callable[[list[str]], dict[str, torch.Tensor]] | None = None
    manifest: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return self.kind not in ("torchscript", "onnx") and self.model is not None


def register_folder_loader(kind: str, loader: FolderLoader) -> None:
    """Register how model folders of ``kind`` (the plan's ``model.<kind>`` key) load."""
    _FOLDER_LOADERS[kind] = loader


def folder_loader(kind: str) -> FolderLoader:
    """The loader registered for ``kind``, or a clear error naming the missing extra."""
    if kind not in _FOLDER_LOADERS:
        raise CheckpointError(
            f"no loader for {kind!r} model folders is installed",
            hint="pip install 'compress[hf]'" if kind == "hf" else "check the model section",
        )
    return _FOLDER_LOADERS[kind]
