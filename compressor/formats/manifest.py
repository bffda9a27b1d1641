"""The structure manifest: how a compacted model differs from its original architecture.

Stages edit a model in place (remove units, drop blocks, swap a module for a compacted one).
``diff`` compares the model with a :func:`snapshot` taken before the stages and returns a list
of JSON-serialisable ops; ``apply_manifest`` replays them on a freshly built original so that
the saved tensors fit again (``compressor.artifacts`` then resizes parameters to the saved
shapes and loads them strictly). No pickle is involved.

Ops, applied in order:

* ``{"op": "keep_items", "module": "encoder.layer", "indices": [0, 2, 4]}`` – a ModuleList or
  Sequential keeps these children (depth pruning).
* ``{"op": "replace", "module": "blocks.0.attn", "type": "compress.HeadPrunedMHA",
  "config": {...}}`` – the module is replaced by a rebuildable type (``compressor.rebuildable``).
* ``{"op": "set_attrs", "module": "fc1", "attrs": {"out_features": 64}}`` – plain attributes
  (ints, floats, strings, tuples) that changed, such as widths and head counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from compressor.errors import CheckpointError, ExportError
from compressor.rebuildable import build_from_config, rebuild_config

_PRIMITIVES = (bool, int, float, str, type(None))


def _is_primitive(value: Any) -> bool:
    if isinstance(value, _PRIMITIVES):
        return True
    if isinstance(value, (tuple, list)):
        return all(_is_primitive(v) for v in value)
    return False


def primitive_attrs(module: nn.Module) -> dict[str, Any]:
    """The module's plain (JSON-representable) public attributes."""
    return {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_") and k != "training" and _is_primitive(v)
    }


@dataclass
class ModuleRecord:
    type_name: str
    attrs: dict[str, Any]
    children: list[int]  # ids of direct children (containers only)


@dataclass
class Snapshot:
    """The structure of a model at one moment, keyed by module identity and by name."""

    by_id: dict[int, tuple[str, ModuleRecord]]
    by_name: dict[str, ModuleRecord]


def type_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def snapshot(model: nn.Module) -> Snapshot:
    """Record every module's type and plain attributes (cheap: no tensor is copied)."""
    by_id: dict[int, tuple[str, ModuleRecord]] = {}
    by_name: dict[str, ModuleRecord] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        children = (
            [id(c) for c in module.children()]
            if isinstance(module, (nn.ModuleList, nn.Sequential))
            else []
        )
        record = ModuleRecord(type_name(module), primitive_attrs(module), children)
        by_id.setdefault(id(module), (name, record))
        by_name[name] = record
    return Snapshot(by_id, by_name)


def _replace_op(name: str, module: nn.Module) -> dict[str, Any]:

    type_key, config = rebuild_config(module, name)
    return {"op": "replace", "module": name, "type": type_key, "config": config}


def diff(before: Snapshot, model: nn.Module) -> list[dict[str, Any]]:
    """The ops that turn the architecture recorded in ``before`` into ``model``'s structure.

    Raises:
        ExportError: a module was replaced by a type compress cannot rebuild without pickle.
    """
    ops: list[dict[str, Any]] = []
    replaced: list[str] = []

    def inside_replaced(name: str) -> bool:
        return any(name == r or name.startswith(r + ".") for r in replaced)

    for name, module in model.named_modules():
        if inside_replaced(name):
            continue
        found = before.by_id.get(id(module))
        record = found[1] if found else None
        if record is None or record.type_name != type_name(module):
            # Fall back on the name: a stage may have rebuilt an identical module.
            by_name = before.by_name.get(name)
            if by_name is not None and by_name.type_name == type_name(module) and name:
                record = by_name
            elif name == "":
                raise ExportError(
                    "the model's root module was replaced; compress cannot describe that change"
                )
            else:
                ops.append(_replace_op(name, module))
                replaced.append(name)
                continue
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and record.children:
            now = [id(c) for c in module.children()]
            if now != record.children and all(c in record.children for c in now):
                ops.append(
                    {
                        "op": "keep_items",
                        "module": name,
                        "indices": [record.children.index(c) for c in now],
                    }
                )
        attrs = primitive_attrs(module)
        changed = {k: v for k, v in attrs.items() if record.attrs.get(k, object()) != v}
        if changed:
            ops.append({"op": "set_attrs", "module": name, "attrs": changed})
    return ops


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise CheckpointError(
            f"the file's structure manifest names module {name!r}, which the architecture lacks",
            hint="the file was made from a different architecture; pass the right one",
        ) from None


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = _get(model, parent_name)
    if isinstance(parent, (nn.ModuleList, nn.Sequential)) and child.isdigit():
        parent[int(child)] = new
    else:
        setattr(parent, child, new)


def apply_manifest(model: nn.Module, ops: list[dict[str, Any]]) -> nn.Module:
    """Replay a structure manifest on a freshly built original model (in place)."""

    for op in ops:
        kind = op.get("op")
        name = op.get("module", "")
        if kind == "keep_items":
            container = _get(model, name)
            items = list(container.children())
            try:
                kept = [items[i] for i in op["indices"]]
            except IndexError:
                raise CheckpointError(
                    f"manifest keeps item indices {op['indices']} of {name!r}, which has "
                    f"{len(items)}"
                ) from None
            if isinstance(container, nn.ModuleList):
                new = nn.ModuleList(kept)
            else:
                new = nn.Sequential(*kept)
            if name:
                _set_submodule(model, name, new)
            else:
                raise CheckpointError("manifest edits the root container, which is not supported")
        elif kind == "replace":
            _set_submodule(model, name, build_from_config(op["type"], op["config"]))
        elif kind == "set_attrs":
            module = _get(model, name)
            for key, value in op["attrs"].items():
                current = getattr(module, key, None)
                if isinstance(current, tuple) and isinstance(value, list):
                    value = tuple(value)
                setattr(module, key, value)
        else:
            raise CheckpointError(f"unknown structure manifest op {kind!r}")
    return model
