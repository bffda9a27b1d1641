"""Loading every supported checkpoint form, without running code from the file.

* a state dict in ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` plus
  ``architecture: package.module:factory`` (pickle-based files are read with
  ``torch.load(weights_only=True)``, which refuses arbitrary objects);
* a training checkpoint (``state_dict`` / ``model`` / ``module`` keys, Lightning ``.ckpt``
  with its ``model.`` prefix), found automatically or by ``state_dict_key``;
* a compress output (``model.safetensors`` with compress metadata): rebuilt without pickle;
* a fully pickled ``nn.Module`` only with ``trust_pickle: true`` (a warning is shown);
* a TorchScript or ``.onnx`` file: benchmarking only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import ValidationError

from compressor.data.tokenization import load_tokenizer, sequence_length
from compressor.errors import CheckpointError
from compressor.files.tensors import PICKLE_SUFFIXES, is_torchscript, read_tensor_mapping
from compressor.formats.architecture import ArchitectureRef, call_factory
from compressor.formats.binding import bind_inputs
from compressor.formats.compacted import is_compressed_file, load_compressed
from compressor.formats.hf.paths import resolve_package_path
from compressor.formats.input_checks import check_inputs_fit
from compressor.formats.registry import LoadedModel, folder_loader
from compressor.formats.state_dict import extract_state_dict, fit_state_dict
from compressor.forward import TORCH_DTYPES
from compressor.safe_import import resolve_import
from compressor.spec.sections import InputSpec


def example_inputs(
    specs: Mapping[str, Any], *, batch_size: int | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Deterministic example inputs from ``model.inputs`` specs (values in their range)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, spec in specs.items():
        shape = list(spec.shape)
        if batch_size is not None:
            shape[0] = batch_size
        dtype = TORCH_DTYPES[spec.dtype]
        if dtype.is_floating_point:
            if spec.low is not None and spec.high is not None:
                t = torch.rand(shape, generator=generator) * (spec.high - spec.low) + spec.low
            else:
                t = torch.randn(shape, generator=generator)
            out[name] = t.to(dtype)
        elif dtype == torch.bool:
            out[name] = torch.ones(shape, dtype=torch.bool)
        else:
            low = int(spec.low) if spec.low is not None else 0
            high = int(spec.high) if spec.high is not None else 2
            out[name] = torch.randint(low, high, shape, generator=generator, dtype=dtype)
    return out


def resolve_path(path: str | Path, base_dir: Path | None) -> Path:
    """A plan's file or folder reference as a path: relative to the plan's folder, or
    ``package:NAME/SUB`` for a folder inside an installed Python package (found without
    importing it; see :func:`compressor.formats.hf.paths.resolve_package_path`)."""
    if str(path).startswith("package:"):
        return resolve_package_path(str(path))
    p = Path(path).expanduser()
    return p if p.is_absolute() or base_dir is None else base_dir / p


def load_model(
    spec: Any,
    base_dir: Path | None = None,
    *,
    safe: bool = False,
    allowed_imports: list[str] | None = None,
) -> LoadedModel:
    """Load the model a plan's ``model:`` (or ``teacher:``) section describes, its
    ``forward()`` bound to the plan's input names (:func:`compressor.formats.binding.bind_inputs`).

    Raises:
        CheckpointError: with the file and the fix, for every failure a user can cause.
        PlanError: the plan's input names do not fit ``forward()``, or its example inputs
            exceed the model's position table or vocabulary.
    """
    loaded = _load_model(spec, base_dir, safe=safe, allowed_imports=allowed_imports)
    if isinstance(loaded.model, nn.Module) and loaded.kind != "torchscript":
        note = bind_inputs(loaded.model, list(loaded.input_specs))
        if note:
            loaded.notes.append(note)
        check_inputs_fit(loaded.model, loaded.input_specs)
    return loaded


def _load_model(
    spec: Any,
    base_dir: Path | None = None,
    *,
    safe: bool = False,
    allowed_imports: list[str] | None = None,
) -> LoadedModel:
    """Load the model a plan's ``model:`` (or ``teacher:``) section describes.

    Args:
        spec: the plan's ``ModelSpec`` (or ``TeacherSpec``).
        base_dir: the plan's folder; relative paths resolve against it.
        safe: safe mode: refuse ``trust_pickle`` and imports not explicitly allowed.
        allowed_imports: module prefixes safe mode may import (``--allow-import``).

    Raises:
        CheckpointError: with the file and the fix, for every failure a user can cause.
    """
    if safe and spec.trust_pickle:
        raise CheckpointError(
            f"trust_pickle: true asks to unpickle {spec.checkpoint or spec.hf}, which safe mode "
            "refuses (unpickling runs code stored in the file)",
            hint="convert the checkpoint to a state dict (.safetensors), or run without --safe",
        )
    if spec.hf is not None:
        return folder_loader("hf")(spec, resolve_path(spec.hf, base_dir), safe=safe)
    path = resolve_path(spec.checkpoint, base_dir)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist", hint="check model.checkpoint")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return LoadedModel(None, "onnx", path, None, dict(spec.inputs))
    if suffix in PICKLE_SUFFIXES and is_torchscript(path):
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise CheckpointError(f"TorchScript file {path} cannot be loaded ({e})") from None
        return LoadedModel(scripted, "torchscript", path, None, dict(spec.inputs))

    if is_compressed_file(path):
        arch = None
        if spec.architecture:
            arch = ArchitectureRef("factory", spec.architecture, dict(spec.kwargs))
        loaded = load_compressed(path, safe=safe, architecture=arch)
        inputs = dict(spec.inputs) or _file_input_specs(loaded.inputs, path)
        return LoadedModel(
            loaded.model,
            "compressed",
            path,
            loaded.architecture,
            inputs,
            manifest=loaded.manifest,
            history=loaded.history,
            tokenizer=_tokenizer_for(spec, base_dir),
        )

    obj = read_tensor_mapping(path, trust_pickle=spec.trust_pickle)
    if isinstance(obj, nn.Module):
        return LoadedModel(
            obj,
            "pickled_module",
            path,
            None,
            dict(spec.inputs),
            notes=["loaded by unpickling (trust_pickle: true)"],
        )
    state, kind = extract_state_dict(obj, path, spec.state_dict_key)
    if not spec.architecture:
        raise CheckpointError(
            f"checkpoint {path} is a state dict; compress needs the code that builds the model",
            hint="set model.architecture: 'package.module:factory' (and model.kwargs)",
        )
    factory = resolve_import(
        spec.architecture, what="model.architecture", safe=safe, allowed_prefixes=allowed_imports
    )
    model = call_factory(factory, spec.architecture, dict(spec.kwargs))
    fit_state_dict(model, state, path, spec.architecture)
    model.eval()
    arch = ArchitectureRef("factory", spec.architecture, dict(spec.kwargs))
    return LoadedModel(
        model, kind, path, arch, dict(spec.inputs), tokenizer=_tokenizer_for(spec, base_dir)
    )


def _file_input_specs(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """The example-input specs a compress file records, validated like a plan's."""

    try:
        return {str(n): InputSpec.model_validate(s) for n, s in raw.items()}
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(
            f"{path}: metadata 'inputs' is not valid ({where}: {first['msg']})",
            hint="give model.inputs in the plan, or export the file again",
        ) from None


def _tokenizer_for(spec: Any, base_dir: Path | None):
    """The plan's ``model.tokenizer`` as a callable, or None."""
    if not spec.tokenizer:
        return None

    return load_tokenizer(resolve_path(spec.tokenizer, base_dir), sequence_length(spec.inputs))
