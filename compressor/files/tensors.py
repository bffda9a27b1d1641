"""Reading a tensors file (safetensors, or a pickle-based torch file read with
``weights_only=True``) into a name -> tensor mapping, never unpickling arbitrary objects
unless the user trusts the file."""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# Through the module: replacing safetensors' functions (tests simulating a full disk)
# must reach every writer.
import safetensors.torch
import torch

from compressor.errors import CheckpointError
from compressor.files.safetensors_header import read_header

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


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
        read_header(path)
        try:
            return safetensors.torch.load_file(str(path))
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
