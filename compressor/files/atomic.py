"""Atomic writes: a temporary file in the target's folder, fsynced, then renamed over the
target, so a crash or a full disk never leaves a half-written output."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _default_file_mode() -> int:
    # mkstemp creates 0600 files; a published artifact gets the mode a plain open() would
    # give it (0666 less the umask), so CI steps running as another user can read it.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto
    ``path``, on failure removed. Readers never see a half-written file under the final name.

    The temporary name is hidden and ends in ``.tmp`` (``.model.safetensors.x1y2.tmp``); only
    a process killed mid-write (SIGKILL, power loss) can leave one behind, never a partial
    file under ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path | str, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
