"""Read and validate a safetensors header before any tensor is read.

A truncated, oversized or forged file is refused with a clear message instead of a crash or a
huge allocation: header length bounded, JSON well formed, every tensor's dtype known, shape
sane, byte range inside the file and of exactly the size its dtype and shape imply.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from compressor.errors import CheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
DAMAGED = "the file is damaged or incomplete: copy, download or save it again"
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def read_header(path: Path) -> dict[str, Any]:
    """Return the validated header of a safetensors file.

    Raises:
        CheckpointError: the file is missing, truncated, oversized or malformed.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(
                    f"{path}: too short to be a safetensors file ({size} bytes)", hint=DAMAGED
                )
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: safetensors header claims {header_len} bytes (limit "
                    f"{MAX_HEADER_BYTES}); the file is corrupt or not safetensors",
                    hint=DAMAGED,
                )
            if 8 + header_len > size:
                raise CheckpointError(
                    f"{path}: truncated (header needs {8 + header_len} bytes, file has {size})",
                    hint=DAMAGED,
                )
            raw = f.read(header_len)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a safetensors file") from None
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(
            f"{path}: the safetensors header is not valid JSON (corrupt?)"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    data_size = size - 8 - header_len
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in info.items()
            ):
                raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
            continue
        _check_entry(path, name, info, data_size)
        ranges.append((info["data_offsets"][0], info["data_offsets"][1], name))
    ranges.sort()
    position = 0
    for begin, end, name in ranges:
        if begin != position:
            raise CheckpointError(
                f"{path}: tensor {name!r} starts at byte {begin}, expected {position} "
                "(overlapping or gapped data: corrupt file)"
            )
        position = end
    if position != data_size:
        raise CheckpointError(
            f"{path}: tensors cover {position} bytes but the file holds {data_size} "
            "(truncated or padded file)",
            hint=DAMAGED,
        )
    return header


def _check_entry(path: Path, name: str, info: Any, data_size: int) -> None:
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: header entry {name!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise CheckpointError(
            f"{path}: tensor {name!r} has byte range {offsets!r} outside the file's "
            f"{data_size} data bytes (truncated or corrupt)",
            hint=DAMAGED,
        )
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            f"{path}: tensor {name!r} ({dtype}, shape {shape}) needs {expected} bytes but its "
            f"range holds {offsets[1] - offsets[0]}"
        )


def _is_count(value: Any) -> bool:
    # JSON true/false parse as Python bools, which are ints: not a dimension or an offset.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
