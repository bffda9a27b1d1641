"""Atomic file writes and the compacted-model safetensors format.

A compress ``model.safetensors`` holds dense compacted tensors (each shared tensor stored
once) and string metadata:

* ``format`` = ``compress``, ``format_version``;
* ``architecture``: how to build the original model (``compressor.architecture``);
* ``manifest``: the structure ops that turn the original into the compacted model;
* ``aliases``: ``{key: stored_key}`` for tensors tied to another one;
* ``encoded``: tensors stored as a uint8 codebook index (lossless for clustered weights);
* ``inputs``: the model's named example-input specs;
* ``history``, ``plan``: how the model was made (provenance, not needed to load).

``load_compressed`` rebuilds the original architecture, replays the manifest, resizes each
parameter to its saved shape and loads the tensors strictly. No pickle anywhere."""

from __future__ import annotations

import json
import math
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Through the module: replacing safetensors' functions (tests simulating a full disk)
# must reach every writer.
import safetensors.torch
import torch
import torch.nn as nn

from compressor.errors import CheckpointError, ExportError, explain, is_out_of_memory
from compressor.files.atomic import atomic_path
from compressor.files.safetensors_header import read_header
from compressor.formats.architecture import ArchitectureRef
from compressor.formats.manifest import apply_manifest
from compressor.graph.decoder.edits import sync_decoder_config
from compressor.graph.depth import sync_configs

FORMAT = "compress"


_DAMAGED = "the file is damaged or not written by compress: export it again"


FORMAT_VERSION = 2  # 2: codebooks of <= 16 entries store two 4-bit indices per byte


_CODEBOOK_MAX = 256


_CODEBOOK_MIN_NUMEL = 1024


@dataclass
class SavedModel:
    path: Path
    size_bytes: int
    aliases: dict[str, str] = field(default_factory=dict)
    encoded: dict[str, dict[str, Any]] = field(default_factory=dict)


def _storage_key(t: torch.Tensor) -> tuple:
    return (
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        tuple(t.shape),
        tuple(t.stride()),
        t.dtype,
    )


def dedupe_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each shared tensor once: returns (unique tensors, aliases ``{key: stored_key}``)."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, tensor in state.items():
        sk = _storage_key(tensor)
        if sk in seen and tensor.numel() > 0:
            aliases[key] = seen[sk]
            continue
        seen[sk] = key
        unique[key] = tensor
    return unique, aliases


def _try_codebook(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """uint8 indices + codebook when the tensor has at most 256 distinct values (lossless)."""
    if not tensor.is_floating_point() or tensor.numel() < _CODEBOOK_MIN_NUMEL:
        return None
    flat = tensor.detach().reshape(-1)
    # Cheap rejection first: trained weights have far more distinct values.
    if torch.unique(flat[:4096]).numel() > _CODEBOOK_MAX:
        return None
    values, inverse = torch.unique(flat, return_inverse=True)
    if values.numel() > _CODEBOOK_MAX:
        return None
    return inverse.to(torch.uint8).reshape(tensor.shape), values


def encode_state(state: dict[str, torch.Tensor], codebooks: bool = True):
    """Codebook-encode tensors that have few distinct values (clustered weights)."""
    stored: dict[str, torch.Tensor] = {}
    encoded: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        coded = _try_codebook(tensor) if codebooks else None
        if coded is None:
            stored[key] = tensor
            continue
        indices, values = coded
        info: dict[str, Any] = {
            "encoding": "codebook",
            "dtype": str(tensor.dtype).replace("torch.", ""),
        }
        if values.numel() <= 16:  # 4-bit indices: two per byte (8x smaller than float32)
            indices = _pack4(indices)
            info.update(bits=4, shape=list(tensor.shape))
        stored[f"{key}.__indices"] = indices
        stored[f"{key}.__codebook"] = values
        encoded[key] = info
    return stored, encoded


def _pack4(indices: torch.Tensor) -> torch.Tensor:
    flat = indices.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def _unpack4(packed: torch.Tensor, shape: Any, key: str, path: Path) -> torch.Tensor:
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError(f"{path}: codebook shape of {key!r} is invalid", hint=_DAMAGED)
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != (numel + 1) // 2:
        raise CheckpointError(f"{path}: packed codebook indices of {key!r} do not fit its shape")
    flat = torch.stack([packed.reshape(-1) & 0x0F, packed.reshape(-1) >> 4], dim=1).reshape(-1)
    return flat[:numel].reshape(shape)


def save_compressed(
    model: nn.Module,
    path: Path | str,
    *,
    architecture: ArchitectureRef,
    manifest: list[dict[str, Any]],
    inputs: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    plan: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    codebooks: bool = True,
) -> SavedModel:
    """Write ``model``'s dense tensors and the metadata needed to rebuild it (atomically)."""

    state = {k: v.detach().cpu() for k, v in model.state_dict(keep_vars=False).items()}
    unique, aliases = dedupe_state(state)
    stored, encoded = encode_state(unique, codebooks=codebooks)
    stored = {k: v.contiguous() for k, v in stored.items()}
    metadata = {
        "format": FORMAT,
        # Version 1 readers cannot unpack 4-bit indices: only such files say version 2.
        "format_version": str(2 if any(e.get("bits") == 4 for e in encoded.values()) else 1),
        "architecture": json.dumps(architecture.to_dict()),
        "manifest": json.dumps(manifest),
        "aliases": json.dumps(aliases),
        "encoded": json.dumps(encoded),
        "inputs": json.dumps(inputs or {}),
        "history": json.dumps(history or []),
        "plan": json.dumps(plan or {}, default=str),
    }
    for key, value in (extra or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value, default=str)
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            safetensors.torch.save_file(stored, str(tmp), metadata=metadata)
            canonicalize_header(tmp)
    except Exception as e:  # OSError, or safetensors' own error type for I/O failures
        explained = explain(e)
        if explained is None:
            raise ExportError(f"could not write {path}: {e}") from None
        explained.message = f"could not write {path}: {explained.message}"
        raise explained from None
    return SavedModel(path, path.stat().st_size, aliases, encoded)


def canonicalize_header(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata keys sorted, in place.

    The safetensors library keeps metadata in a Rust HashMap, whose order is random in each
    process, so the same model would otherwise give different bytes on every run (and a
    resumed run could never be byte-identical to an uninterrupted one). Tensor entries and
    data are untouched; the header keeps its length (padded with spaces, as the format allows).
    """
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        meta = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length:  # cannot happen for a reordering; never corrupt the file
            return
        f.seek(8)
        f.write(text + b" " * (length - len(text)))


def read_metadata(path: Path | str) -> dict[str, str] | None:
    """The safetensors header metadata (None if the file has none). Reads only the header."""

    header = read_header(Path(path))
    return header.get("__metadata__")


def is_compressed_file(path: Path | str) -> bool:
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return False
    try:
        meta = read_metadata(path)
    except CheckpointError:
        return False
    return bool(meta) and meta.get("format") == FORMAT


def _json_field(meta: dict[str, str], key: str, path: Path, default: Any) -> Any:
    if key not in meta:
        return default
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: metadata field {key!r} is not valid JSON") from None


@dataclass
class CompressedFile:
    model: nn.Module
    architecture: ArchitectureRef
    manifest: list[dict[str, Any]]
    inputs: dict[str, Any]
    history: list[dict[str, Any]]
    plan: dict[str, Any]
    metadata: dict[str, str]


def decode_state(stored: dict[str, torch.Tensor], encoded: dict[str, dict[str, Any]], path: Path):
    state = dict(stored)
    for key, info in encoded.items():
        if info.get("encoding") != "codebook":
            raise CheckpointError(f"{path}: unknown tensor encoding {info.get('encoding')!r}")
        try:
            indices = state.pop(f"{key}.__indices")
            values = state.pop(f"{key}.__codebook")
        except KeyError:
            raise CheckpointError(f"{path}: codebook tensors of {key!r} are missing") from None
        bits = info.get("bits", 8)
        if bits == 4:
            indices = _unpack4(indices, info.get("shape"), key, path)
        elif bits != 8:
            raise CheckpointError(f"{path}: codebook of {key!r} has {bits!r}-bit indices")
        if indices.numel() and int(indices.max()) >= values.numel():
            raise CheckpointError(f"{path}: codebook index of {key!r} is out of range")
        state[key] = values[indices.long()]
    return state


def fit_tensors_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resize each parameter/buffer of ``model`` whose shape differs from the saved one.

    Structure ops already set the modules' attributes; this makes the tensors agree so that
    ``load_state_dict(strict=True)`` can check everything else.
    """
    for key, saved in state.items():
        module_name, _, attr = key.rpartition(".")
        try:
            module = model.get_submodule(module_name) if module_name else model
        except AttributeError:
            continue  # reported by the strict load
        if attr in module._parameters and module._parameters[attr] is not None:
            current = module._parameters[attr]
            if current.shape != saved.shape:
                module._parameters[attr] = nn.Parameter(
                    torch.empty(saved.shape, dtype=current.dtype),
                    requires_grad=current.requires_grad,
                )
        elif attr in module._buffers and module._buffers[attr] is not None:
            current = module._buffers[attr]
            if current.shape != saved.shape:
                module._buffers[attr] = torch.empty(saved.shape, dtype=current.dtype)


def retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Make every alias the very same Parameter as its stored tensor (weight tying)."""
    for alias, stored in aliases.items():
        src_mod, _, src_attr = stored.rpartition(".")
        dst_mod, _, dst_attr = alias.rpartition(".")
        src = model.get_submodule(src_mod) if src_mod else model
        dst = model.get_submodule(dst_mod) if dst_mod else model
        if src_attr in src._parameters:
            dst._parameters[dst_attr] = src._parameters[src_attr]
        elif src_attr in src._buffers:
            dst._buffers[dst_attr] = src._buffers[src_attr]


def load_compressed(
    path: Path | str,
    *,
    safe: bool = False,
    architecture: ArchitectureRef | None = None,
    builder: Callable[[ArchitectureRef], nn.Module] | None = None,
) -> CompressedFile:
    """Rebuild a compacted model from a compress safetensors file (no pickle).

    The file is untrusted input: every metadata field is type-checked, and any failure to
    replay it (a forged manifest, tensors that do not fit) is a :class:`CheckpointError`
    naming the file, never a crash.

    Args:
        path: the ``model.safetensors`` written by compress.
        safe: refuse architecture imports not explicitly allowed.
        architecture: build this instead of the architecture the file names.
        builder: build the original yourself (overrides ``architecture``).

    Raises:
        CheckpointError: the file is not a readable compress model file.
    """
    path = Path(path)
    meta = read_metadata(path) or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a compress model file (no compress metadata)",
            hint="for a plain state dict, give model.architecture in the plan",
        )
    try:
        version = int(meta.get("format_version", "0") or 0)
    except ValueError:
        raise CheckpointError(
            f"{path}: metadata format_version {meta['format_version']!r} is not a number",
            hint=_DAMAGED,
        ) from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses format version {version}; this compress reads up to {FORMAT_VERSION}",
            hint="upgrade compress",
        )
    arch = architecture or ArchitectureRef.from_dict(_json_field(meta, "architecture", path, {}))
    manifest = _typed_field(meta, "manifest", path, [], list, "a list of ops")
    if not all(isinstance(op, dict) for op in manifest):
        raise CheckpointError(f"{path}: metadata 'manifest' holds a non-object op", hint=_DAMAGED)
    aliases = _typed_field(meta, "aliases", path, {}, dict, "an object")
    encoded = _typed_field(meta, "encoded", path, {}, dict, "an object")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise CheckpointError(f"{path}: metadata 'aliases' must map names to names", hint=_DAMAGED)
    if not all(isinstance(v, dict) for v in encoded.values()):
        raise CheckpointError(f"{path}: metadata 'encoded' entries must be objects", hint=_DAMAGED)
    inputs = _typed_field(meta, "inputs", path, {}, dict, "an object")
    history = _typed_field(meta, "history", path, [], list, "a list")
    plan = _typed_field(meta, "plan", path, {}, dict, "an object")
    model = (
        builder(arch) if builder else arch.build(safe=safe, from_file_metadata=architecture is None)
    )
    try:
        _rebuild(model, path, manifest, aliases, encoded)
    except CheckpointError:
        raise
    except Exception as e:
        if is_out_of_memory(e):
            raise
        # A manifest or tensors that do not fit what the file names: bad input, not a bug.
        raise CheckpointError(
            f"{path}: the model it describes cannot be rebuilt ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else 'no details'})",
            hint="the file is damaged, forged, or was written for another architecture",
        ) from None
    return CompressedFile(
        model=model,
        architecture=arch,
        manifest=manifest,
        inputs=inputs,
        history=history,
        plan=plan,
        metadata=meta,
    )


def _rebuild(model: nn.Module, path: Path, manifest: list, aliases: dict, encoded: dict) -> None:
    """Replay the manifest on the freshly built original and load the file's tensors."""

    apply_manifest(model, manifest)

    sync_configs(model, manifest)  # configs are not modules: redo the layer-count edits
    try:
        stored = safetensors.torch.load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: cannot read tensors ({e})", hint=_DAMAGED) from None
    state = decode_state(stored, encoded, path)
    for alias, target in aliases.items():
        if target not in state:
            raise CheckpointError(f"{path}: alias {alias!r} points to missing tensor {target!r}")
        state[alias] = state[target]
    fit_tensors_to_state(model, state)
    # safetensors cannot carry _metadata (state-dict versions some loaders check, e.g.
    # torchvision's MNASNet): the rebuilt model's own versions are the ones it was saved with.
    state = OrderedDict(state)
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the rebuilt architecture: missing {list(missing)[:8]}, "
            f"unexpected {list(unexpected)[:8]}",
            hint="the file was made from another architecture or version",
        )
    retie(model, aliases)
    # A decoder LLM's config states widths that its forward reads (Phi-3's head count,
    # Gemma's embedding scale): derive them from the rebuilt modules.
    sync_decoder_config(model)
    model.eval()


def _typed_field(
    meta: dict[str, str], key: str, path: Path, default: Any, kind: type, what: str
) -> Any:
    value = _json_field(meta, key, path, default)
    if not isinstance(value, kind):
        raise CheckpointError(
            f"{path}: metadata {key!r} must be {what}, not {type(value).__name__}", hint=_DAMAGED
        )
    return value
