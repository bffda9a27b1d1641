"""Rebuild a compacted structure on a freshly built transformers model.

This file is copied verbatim into the ``modeling_compressed.py`` of a Hugging Face folder that
compress writes for a model whose structure no stock config can state (heads pruned with the
hidden size kept, per-layer widths). It imports only torch, so the folder loads with
``from_pretrained(folder, trust_remote_code=True)`` where compress is not installed.

``config.compress`` holds what to replay on the model the stock config builds
(``structure_version`` says which version of this file wrote it):

* ``manifest``: ops, in order: ``keep_items`` (a ModuleList keeps these children),
  ``replace`` (a module becomes a plain torch Linear / Embedding / LayerNorm / Identity),
  ``set_attrs`` (plain attributes such as head counts and widths);
* ``shapes``: ``{state-dict key: shape}`` of every tensor whose shape differs from the stock
  build; those tensors are resized (before weights are loaded, so loading stays strict);
* ``base_prefix``: where the saved class keeps its base model (``"bert"`` for a
  ``BertForSequenceClassification``, ``""`` for a ``BertModel``), so that ``AutoModel`` on a
  classifier's folder, or a head class on a base model's folder, finds its modules.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

STRUCTURE_VERSION = 1

_MODULES = {
    "torch.Identity": lambda c: nn.Identity(),
    "torch.Linear": lambda c: nn.Linear(c["in_features"], c["out_features"], bias=c["bias"]),
    "torch.Embedding": lambda c: nn.Embedding(
        c["num_embeddings"], c["embedding_dim"], padding_idx=c["padding_idx"]
    ),
    "torch.LayerNorm": lambda c: nn.LayerNorm(
        c["normalized_shape"],
        eps=c["eps"],
        elementwise_affine=c["elementwise_affine"],
        bias=c["bias"],
    ),
}
REPLACEABLE_TYPES = tuple(_MODULES)


class StructureError(ValueError):
    """The folder's ``compress`` structure does not fit the model its config builds."""


def local_name(model: nn.Module, name: str, base_prefix: str) -> str | None:
    """``name`` (relative to the saved class) relative to ``model``; None when ``model`` has no
    such part (the saved class's head, when ``model`` is the bare base model)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    headed = bool(prefix) and isinstance(getattr(model, prefix, None), nn.Module)
    if base_prefix and not headed:
        if name == base_prefix:
            return ""
        if name.startswith(base_prefix + "."):
            return name[len(base_prefix) + 1 :]
        return None
    if not base_prefix and headed:
        return f"{prefix}.{name}" if name else prefix
    return name


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise StructureError(
            f"config.json's compress structure names module {name!r}, which "
            f"{type(model).__name__} lacks: the folder's config and weights do not belong together"
        ) from None


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = _module(model, parent_name)
    if isinstance(parent, (nn.ModuleList, nn.Sequential)) and child.isdigit():
        parent[int(child)] = new
    else:
        setattr(parent, child, new)


def _resized(old: torch.Tensor, shape: list[int]) -> torch.Tensor:
    # The leading slice of the stock tensor when it fits (a sensible value for from_config);
    # from_pretrained overwrites it with the saved tensor either way.
    if old.dim() == len(shape) and all(n <= m for n, m in zip(shape, old.shape, strict=True)):
        return old.detach()[tuple(slice(0, n) for n in shape)].clone()
    return torch.zeros(shape, dtype=old.dtype, device=old.device)


def _apply_op(model: nn.Module, op: dict[str, Any], name: str) -> None:
    kind = op.get("op")
    if kind == "keep_items":
        container = _module(model, name)
        items = list(container.children())
        kept = [items[i] for i in op["indices"]]
        new = nn.ModuleList(kept) if isinstance(container, nn.ModuleList) else nn.Sequential(*kept)
        _set_child(model, name, new)
    elif kind == "replace":
        build = _MODULES.get(op.get("type"))
        if build is None:
            raise StructureError(f"module {name!r} needs type {op.get('type')!r}, not portable")
        _set_child(model, name, build(op["config"]))
    elif kind == "set_attrs":
        module = _module(model, name)
        for key, value in op["attrs"].items():
            if isinstance(getattr(module, key, None), tuple) and isinstance(value, list):
                value = tuple(value)  # JSON has no tuples (LayerNorm.normalized_shape)
            setattr(module, key, value)
    else:
        raise StructureError(f"unknown structure op {kind!r} in config.json's compress field")


def apply_compressed_structure(model: nn.Module, structure: dict[str, Any] | None) -> nn.Module:
    """Replay ``structure`` (``config.compress``) on ``model``, in place; a no-op without one.

    Raises:
        StructureError: the structure names modules or tensors the model lacks.
    """
    if not structure:
        return model
    version = structure.get("structure_version", STRUCTURE_VERSION)
    if version > STRUCTURE_VERSION:
        raise StructureError(
            f"config.json's compress structure has version {version}; this modeling "
            f"file reads up to {STRUCTURE_VERSION}"
        )
    base_prefix = structure.get("base_prefix", "")
    for op in structure.get("manifest") or []:
        name = local_name(model, op.get("module", ""), base_prefix)
        if name is not None:
            _apply_op(model, op, name)
    for key, shape in (structure.get("shapes") or {}).items():
        name = local_name(model, key, base_prefix)
        if name is None:
            continue
        module_name, _, attr = name.rpartition(".")
        module = _module(model, module_name)
        if module._parameters.get(attr) is not None:
            old = module._parameters[attr]
            module._parameters[attr] = nn.Parameter(
                _resized(old, shape), requires_grad=old.requires_grad
            )
        elif module._buffers.get(attr) is not None:
            module._buffers[attr] = _resized(module._buffers[attr], shape)
        else:
            raise StructureError(f"config.json's compress structure resizes {key!r}, not a tensor")
    return model
