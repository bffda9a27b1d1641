"""``compress inspect``: what is inside a checkpoint, a model folder, an ONNX file or a plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch.nn as nn

from compressor.counting import count_macs, count_params
from compressor.errors import CheckpointError, PlanError
from compressor.formats.loading import example_inputs, load_model
from compressor.graph import count_prunable_groups
from compressor.plan.load import load_plan
from compressor.spec.sections import InputSpec, ModelSpec


def parse_input_option(text: str) -> tuple[str, dict[str, Any]]:
    """``x=1x1x8x8`` or ``input_ids=1x128:int64`` -> (name, InputSpec fields)."""
    name, sep, rest = text.partition("=")
    shape_text, _, dtype = rest.partition(":")
    try:
        shape = [int(d) for d in shape_text.lower().split("x")]
    except ValueError:
        shape = []
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise PlanError(f"--input {text!r}: expected NAME=SHAPE[:DTYPE], e.g. x=1x3x224x224")
    return name, {"shape": shape, "dtype": dtype or "float32"}


def _module_rows(model: nn.Module) -> list[dict[str, Any]]:
    rows = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        weight = getattr(module, "weight", None)
        shape = (
            "x".join(str(d) for d in weight.shape)
            if weight is not None and hasattr(weight, "shape")
            else ""
        )
        rows.append(
            {
                "name": name or "(root)",
                "type": type(module).__name__,
                "params": sum(p.numel() for p in own),
                "shape": shape,
            }
        )
    return rows


def _onnx_info(path: Path) -> dict[str, Any]:

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable ONNX file ({e})") from None
    rows = []
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        total += n
        rows.append(
            {
                "name": init.name,
                "type": "initializer",
                "params": n,
                "shape": "x".join(map(str, init.dims)),
            }
        )
    inputs = ", ".join(i.name for i in model.graph.input)
    return {
        "path": str(path),
        "kind": "onnx",
        "size_bytes": path.stat().st_size,
        "modules": rows,
        "params": total,
        "macs": None,
        "inputs": inputs,
        "notes": [
            f"opset {model.opset_import[0].version if model.opset_import else '?'}, "
            f"{len(model.graph.node)} nodes"
        ],
    }


def inspect_target(
    target: Path, *, architecture: str | None = None, inputs: list[str], trust_pickle: bool = False
) -> dict[str, Any]:
    """Describe ``target``: modules, parameter counts, MACs at the example input, file size."""

    target = Path(target)
    if target.suffix.lower() in (".yaml", ".yml"):
        loaded_plan = load_plan(target)
        spec, base = loaded_plan.plan.model, loaded_plan.base_dir
    else:
        if not target.exists():
            raise CheckpointError(f"{target} does not exist")
        if target.suffix.lower() == ".onnx":
            return _onnx_info(target)
        specs = dict(parse_input_option(i) for i in inputs)
        fields: dict[str, Any] = {"inputs": specs, "trust_pickle": trust_pickle}
        if target.is_dir():
            fields["hf"] = str(target)
        else:
            fields["checkpoint"] = str(target)
            fields["architecture"] = architecture
        spec, base = ModelSpec.model_validate(fields), None
    loaded = load_model(spec, base)
    path = loaded.path
    size = (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if path.is_dir()
        else path.stat().st_size
    )
    info: dict[str, Any] = {
        "path": str(path),
        "kind": loaded.kind,
        "size_bytes": size,
        "modules": [],
        "params": None,
        "macs": None,
        "notes": loaded.notes,
    }
    model = loaded.model
    if model is None:
        return info
    info["modules"] = _module_rows(model)
    info["params"] = count_params(model)
    specs = loaded.input_specs
    if specs:
        specs = {
            n: s if isinstance(s, InputSpec) else InputSpec.model_validate(s)
            for n, s in specs.items()
        }
        example = example_inputs(specs)
        info["macs"] = count_macs(model, example)
        info["inputs"] = ", ".join(f"{n}{list(s.shape)}" for n, s in specs.items())
        try:
            info["prunable_groups"] = count_prunable_groups(model, example)
        except Exception as e:  # the engine explains unsupported layers; inspect still works
            info["notes"] = [*info["notes"], f"pruning groups unavailable: {e}"]
    return info
