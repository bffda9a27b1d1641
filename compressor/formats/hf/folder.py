"""A Hugging Face folder that compress wrote, read back: its config, the transformers model
alone (:func:`from_pretrained`, replaying the structure manifest where a config cannot state
the compacted shape) or the wrapped model (:func:`load_folder`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Through the module: replacing safetensors' functions (tests simulating a full disk)
# must reach every writer.
import safetensors.torch
import torch.nn as nn

from compressor.errors import CheckpointError
from compressor.formats.compacted import fit_tensors_to_state, retie
from compressor.formats.hf.model import HFModel, require_transformers
from compressor.formats.hf.save import WEIGHTS_NAME, build_from_config_dict
from compressor.formats.manifest import apply_manifest


def read_config(folder: Path | str) -> dict[str, Any]:
    """``config.json`` of a Hugging Face folder, as a dict."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{folder} is not a Hugging Face model folder (no config.json)"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read: {e}") from None


def from_pretrained(folder: Path | str) -> nn.Module:
    """The transformers model of a folder written by :func:`save_hf_folder`, per-layer head
    counts and widths included (eval mode, no pickle, no remote code).

    A folder without a ``compress`` field (any ``save_pretrained`` folder with
    ``model.safetensors``) loads as transformers would load it.

    Raises:
        CheckpointError: the folder is missing files or its tensors do not fit its config.
    """

    folder = Path(folder)
    data = read_config(folder)
    info = data.get("compress") or {}
    transformers = require_transformers()
    names = [info.get("class"), *(data.get("architectures") or [])]
    cls = next((getattr(transformers, n) for n in names if n and hasattr(transformers, n)), None)
    if cls is None:
        raise CheckpointError(f"{folder}: transformers has no model class among {names}")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}")
    model = build_from_config_dict(cls, data, meta=False)
    apply_manifest(model, info.get("manifest") or [])
    try:
        state = safetensors.torch.load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{weights}: cannot read tensors ({e})") from None
    aliases = info.get("aliases") or {}
    for alias, stored in aliases.items():
        if stored in state:
            state[alias] = state[stored]
    fit_tensors_to_state(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit its config.json: missing {missing[:8]}, "
            f"unexpected {list(unexpected)[:8]}",
        )
    retie(model, aliases)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


def _tied_keys(model: nn.Module) -> set[str]:
    # Tensors transformers re-ties itself (an output embedding tied to the input one).
    tied = getattr(model, "_tied_weights_keys", None) or {}
    keys = set(tied) if isinstance(tied, (dict, list, set, tuple)) else set()
    return {k for k in keys if isinstance(k, str)}


def load_folder(folder: Path | str) -> nn.Module:
    """A folder written by :func:`save_hf_folder` as the ``HFModel`` compress worked on
    (same task, pooling and output), eval mode."""

    info = read_config(folder).get("compress") or {}
    model = from_pretrained(folder)
    wrapped = HFModel(
        model, info.get("task", "base"), info.get("pooling", "mean"), info.get("normalize", False)
    )
    tokenizer = Path(folder) / "tokenizer.json"
    if tokenizer.is_file() and hasattr(wrapped, "_tokenizer_source"):
        wrapped._tokenizer_source = tokenizer  # the model knows its tokenizer, as when loaded
    return wrapped.eval()
