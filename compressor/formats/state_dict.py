"""State dicts: finding the weights inside a training checkpoint (``state_dict``/``model``
keys, prefixes such as Lightning's ``model.``) and fitting them to a freshly built model."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import CheckpointError

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")


STRIP_PREFIXES = ("model.", "module.", "_orig_mod.", "net.", "network.")


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_state_dict(
    obj: Any, path: Path, key: str | None
) -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict inside a loaded file: itself, ``obj[key]``, or a known key."""
    if key is not None:
        node = obj
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                keys = sorted(map(str, obj.keys())) if isinstance(obj, Mapping) else []
                raise CheckpointError(
                    f"checkpoint {path} has no key {key!r}",
                    hint=f"its top-level keys are: {', '.join(keys[:12])}",
                )
            node = node[part]
        if not _is_tensor_dict(node):
            raise CheckpointError(f"checkpoint {path}: {key!r} is not a mapping of tensors")
        return dict(node), "training_checkpoint"
    if _is_tensor_dict(obj):
        return dict(obj), "state_dict"
    if isinstance(obj, Mapping):
        for candidate in STATE_DICT_KEYS:
            if candidate in obj and _is_tensor_dict(obj[candidate]):
                return dict(obj[candidate]), "training_checkpoint"
        keys = ", ".join(sorted(map(str, obj.keys()))[:12])
        raise CheckpointError(
            f"checkpoint {path} holds no state dict under a known key (found: {keys})",
            hint="name it with model.state_dict_key",
        )
    raise CheckpointError(
        f"checkpoint {path} holds a {type(obj).__name__}, not a state dict",
        hint="save model.state_dict() instead",
    )


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Load ``state`` into ``model`` strictly, stripping a wrapper prefix when that makes it fit.

    Raises:
        CheckpointError: listing missing keys, unexpected keys and shape mismatches.
    """
    expected = model.state_dict()
    if not set(state) & set(expected):
        for prefix in STRIP_PREFIXES:
            stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if set(stripped) & set(expected):
                state = stripped
                break
    state = _retie_and_version(model, state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:6])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:6])}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched[:4])}")
        raise CheckpointError(
            f"checkpoint {path} does not fit architecture {arch}: " + " | ".join(parts),
            hint="check model.architecture and model.kwargs (e.g. widths), or "
            "model.state_dict_key for training checkpoints",
        )
    model.load_state_dict(state, strict=True)


def _retie_and_version(
    model: nn.Module, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` completed with what its file format could not carry.

    * Tied tensors stored once (``safetensors.torch.save_model``, ``save_pretrained``): a key
      missing from the file whose parameter, in the freshly built model, is the very tensor
      of a key that is present is filled from that key (loading then writes one tensor into
      the one shared parameter, so the tie holds). Any other missing key stays missing.
    * ``_metadata`` (per-module state-dict versions, which some modules' loaders check, e.g.
      torchvision's MNASNet): safetensors has no place for it, so the fresh model's versions
      are used, which is what saving that model from this code would have written.
    """
    filled = dict(state)
    missing = [k for k in expected if k not in filled]
    if missing:
        live = model.state_dict(keep_vars=True)
        by_tensor: dict[int, list[str]] = {}
        for key, tensor in live.items():
            by_tensor.setdefault(id(tensor), []).append(key)
        for key in missing:
            alias = next((k for k in by_tensor.get(id(live[key]), []) if k in filled), None)
            if alias is not None:
                filled[key] = filled[alias]
    metadata = getattr(state, "_metadata", None)
    if metadata is None:
        metadata = getattr(expected, "_metadata", None)
    if metadata is not None:
        filled = OrderedDict(filled)
        filled._metadata = metadata  # type: ignore[attr-defined]
    return filled
