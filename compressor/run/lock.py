"""One run per output folder: an advisory lock (``flock`` on POSIX, an exclusive-create file
with a live-owner check elsewhere) and preparing the folder (writable, not a file)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

from compressor.errors import (
    PathError,
    RunLockedError,
)

_LOCK_GRACE_SECONDS = 10.0


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: /proc), so a reused pid is not mistaken for
    the run that took the lock; None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counted after the ")" that ends the command name.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


class OutputLock:
    """An exclusive lock on the output directory: one run writes it at a time.

    Where the OS has ``flock`` (Linux, macOS) the lock is the kernel's, on the file
    ``<out>/.compress.lock``: it is released when its process ends in any way, SIGKILL
    included, so a killed run never blocks the next one and two runs starting together
    cannot both win. Elsewhere the file is created exclusively and holds the owner's pid and
    start time; a lock whose owner is gone is stale and taken over.
    """

    def __init__(self, out_dir: Path):
        self.path = out_dir / ".compress.lock"
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        prepare_out_dir(self.path.parent)
        try:
            import fcntl  # deferred: POSIX only (Windows takes the fallback)
        except ImportError:  # Windows
            return self._enter_by_exclusive_create()
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except PermissionError as e:
                raise _not_writable(self.path.parent, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_pid(fd)
                os.close(fd)
                raise self._locked(owner) from None
            # The previous holder unlinks the file as it finishes: if that happened after we
            # opened it, we hold a lock on a deleted file. Try again on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {_process_start(os.getpid()) or ''}\n".encode())
            self._fd = fd
            return self

    def _locked(self, owner: int | None) -> RunLockedError:
        return RunLockedError(
            f"another compress run{f' (pid {owner})' if owner else ''} is writing "
            f"{self.path.parent} (lock {self.path})",
            hint="wait for it to finish, or use another --out",
        )

    def _enter_by_exclusive_create(self) -> OutputLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._live_owner()
                if owner is None:
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._locked(owner) from None
            except PermissionError as e:
                raise _not_writable(self.path.parent, e) from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {_process_start(os.getpid()) or ''}\n")
            return self
        raise RunLockedError(
            f"could not take the lock {self.path}",
            hint="another run keeps taking it; use another --out",
        )

    def _live_owner(self) -> int | None:
        """The pid of the run holding an exclusive-create lock (0: unknown), or None when the
        lock is stale."""
        try:
            pid_text, _, started = self.path.read_text().strip().partition(" ")
            pid = int(pid_text or "0")
        except (OSError, ValueError):
            pid, started = 0, ""
        if pid <= 0:
            # Empty: a run created it a moment ago and is writing its pid (taking it over
            # now would let two runs in). Only an old unreadable lock is stale.
            try:
                young = time.time() - self.path.stat().st_mtime < _LOCK_GRACE_SECONDS
            except OSError:
                return None
            return 0 if young else None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid  # alive, owned by another user
        current = _process_start(pid)
        if started.strip() and current is not None and current != started.strip():
            return None  # the pid was reused by an unrelated process
        return pid

    def __exit__(self, *exc: Any) -> None:
        # Unlinked while still held, so a run waiting on the old file notices (see above).
        self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None


def _not_writable(out: Path, error: OSError) -> PathError:
    return PathError(
        f"cannot write the output directory {out}: {error.strerror or error}",
        hint="choose a writable --out (or fix the folder's permissions)",
    )


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` and check it is a writable folder, before any work is done.

    Raises:
        PathError: ``out`` is a file, or cannot be created or written (exit 2).
    """
    if out.exists() and not out.is_dir():
        raise PathError(
            f"the output directory {out} is a file",
            hint="give --out a folder (it is created if missing)",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a parent is a file
        raise PathError(
            f"cannot create the output directory {out}: a parent is a file",
            hint="give --out a folder path",
        ) from None
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
            raise _not_writable(out, e) from None
        raise
    if not os.access(out, os.W_OK | os.X_OK):
        raise _not_writable(out, PermissionError(errno.EACCES, "permission denied"))
