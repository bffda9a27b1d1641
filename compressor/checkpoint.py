"""Loading every supported checkpoint form, without running code from the file.

* a state dict in ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` plus
  ``architecture: package.module:factory`` (pickle-based files are read with
  ``torch.load(weights_only=True)``, which refuses arbitrary objects);
* a training checkpoint (``state_dict`` / ``model`` / ``module`` keys, Lightning ``.ckpt``
  with its ``model.`` prefix), found automatically or by ``state_dict_key``;
* a compress output (``model.safetensors`` with compress metadata): rebuilt without pickle;
* a fully pickled ``nn.Module`` only with ``trust_pickle: true`` (a warning is shown);
* a TorchScript or ``.onnx`` file: benchmarking only.
"""

from __future__ import annotations

import io
import pickletools
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compressor.architecture import ArchitectureRef, call_factory, resolve_import
from compressor.errors import CheckpointError
from compressor.modeling import TORCH_DTYPES

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")
STRIP_PREFIXES = ("model.", "module.", "_orig_mod.", "net.", "network.")


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


# ------------------------------------------------------------------ raw readers


def _pickle_globals(path: Path) -> list[str] | None:
    """Names of the Python objects a pickle-based torch file would create (read, not run).

    Returns None when the bytes are not a well-formed pickle (a corrupt file).
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return None
                stream = io.BytesIO(zf.read(name))
                pickles = 1
        else:
            stream = io.BytesIO(path.read_bytes())
            pickles = 5  # legacy format: magic number, protocol, sys info, then the objects
    except Exception:  # a corrupt archive: zipfile raises many types
        return None
    names: list[str] = []
    for index in range(pickles):
        if stream.tell() >= len(stream.getbuffer()):
            break
        strings: list[str] = []
        try:
            for opcode, arg, _pos in pickletools.genops(stream):
                if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                elif opcode.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
        except Exception:  # not a pickle (or the tensor bytes after the legacy pickles)
            if index == 0:
                return None
            break
    return names


def is_torchscript(path: Path) -> bool:
    try:
        if not zipfile.is_zipfile(path):
            return False
    except Exception:  # is_zipfile itself raises BadZipFile on some corrupt archives
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except Exception:  # a corrupt archive: zipfile raises many types
        return False


def _torch_load(path: Path, *, trust_pickle: bool, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle_error_types() as e:
        message = str(e)
        if "Weights only load failed" not in message and "weights_only" not in message:
            raise CheckpointError(
                f"{what} {path} is not a readable PyTorch file ({_first_line(message)})",
                hint="the file may be truncated or corrupt; re-save it",
            ) from None
        found = _pickle_globals(path)
        if found is None:
            raise CheckpointError(
                f"{what} {path} is not a readable PyTorch file (not a valid pickle)",
                hint="the file may be truncated or corrupt; re-save it",
            ) from None
        objects = [g for g in found if not g.startswith(("torch.", "collections."))]
        shown = ", ".join(sorted(set(objects))[:5]) or "non-tensor objects"
        if not trust_pickle:
            raise CheckpointError(
                f"{what} {path} contains pickled Python objects ({shown}); loading it would "
                "run code from the file, so it was not unpickled",
                hint="save a state dict instead (torch.save(model.state_dict(), ...)), or set "
                "model.trust_pickle: true if you trust the file",
            ) from None
    except Exception as e:  # corrupt bytes surface as many types (IndexError, KeyError, ...)
        raise CheckpointError(
            f"{what} {path} is not a readable PyTorch file ({_first_line(str(e))})",
            hint="the file may be truncated or corrupt; re-save it",
        ) from None
    warnings.warn(
        f"unpickling {path} (trust_pickle: true): this runs code stored in the file",
        stacklevel=2,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{what} {path}: unpickling failed ({_first_line(str(e))})") from None


def pickle_error_types() -> tuple[type[BaseException], ...]:
    import pickle

    return (pickle.UnpicklingError,)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "no details"


def read_tensor_mapping(path: Path, *, trust_pickle: bool = False, what: str = "checkpoint") -> Any:
    """Read a tensors file: a name->tensor mapping (or, when trusted, any pickled object)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist", hint="check the path")
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a folder", hint="give a file (or use hf: FOLDER)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        from compressor.safetensors_header import read_header

        read_header(path)
        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{what} {path}: unreadable safetensors ({e})") from None
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
        except ValueError as e:
            raise CheckpointError(
                f"{what} {path}: {e}", hint="save arrays without pickled objects"
            ) from None
        except Exception as e:  # numpy raises many types on corrupt archives
            raise CheckpointError(f"{what} {path} is not a readable .npz file ({e})") from None
    if suffix in PICKLE_SUFFIXES:
        if is_torchscript(path):
            raise CheckpointError(
                f"{what} {path} is a TorchScript archive, not a state dict",
                hint="TorchScript and ONNX files can be benchmarked but not compressed",
            )
        return _torch_load(path, trust_pickle=trust_pickle, what=what)
    raise CheckpointError(
        f"{what} {path}: unsupported file type {suffix!r}",
        hint="use .safetensors, .pt, .pth, .bin, .ckpt or .npz",
    )


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


# ------------------------------------------------------------------ examples


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


# ------------------------------------------------------------------ the loader


def resolve_path(path: str | Path, base_dir: Path | None) -> Path:
    """A plan's file or folder reference as a path: relative to the plan's folder, or
    ``package:NAME/SUB`` for a folder inside an installed Python package (found without
    importing it; see :func:`compressor.hf.resolve_package_path`)."""
    if str(path).startswith("package:"):
        from compressor.hf import resolve_package_path

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
        from compressor.hf import load_hf_folder

        return load_hf_folder(spec, resolve_path(spec.hf, base_dir), safe=safe)
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

    from compressor.artifacts import is_compressed_file, load_compressed

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
    from pydantic import ValidationError

    from compressor.plan import InputSpec

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
    from compressor.tokenization import load_tokenizer, sequence_length

    return load_tokenizer(resolve_path(spec.tokenizer, base_dir), sequence_length(spec.inputs))
