"""Typed errors that carry what a user needs to act.

Every error a user can cause derives from :class:`CompressError`. The CLI prints its
message (never a traceback unless ``--debug``) and exits with its ``exit_code``:

* 0 success, 1 a quality gate failed, 2 bad input, 3 runtime failure, 130 interrupted.
"""

from __future__ import annotations

import errno
import re

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUNTIME = 3
EXIT_INTERRUPTED = 130


class CompressError(Exception):
    """Base of every error ``compress`` reports to a user.

    Args:
        message: what went wrong, naming the file / field involved.
        hint: what to do about it (printed on its own line).
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class PlanError(CompressError):
    """The plan is malformed. ``problems`` lists every problem found, not only the first."""

    def __init__(self, message: str, problems: list[str] | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.problems = list(problems or [])

    def __str__(self) -> str:
        lines = [self.message, *(f"  - {p}" for p in self.problems)]
        if self.hint:
            lines.append(f"  fix: {self.hint}")
        return "\n".join(lines)


class CheckpointError(CompressError):
    """A checkpoint is missing, corrupt, unsafe to read or does not fit the architecture."""


class DataError(CompressError):
    """A data source is missing, malformed or does not fit the model."""


class StageError(CompressError):
    """A stage cannot do what the plan asks (unsupported layer, impossible target...)."""


class ExportError(CompressError):
    """Export or export verification failed."""

    exit_code = EXIT_RUNTIME


class TrainingError(CompressError):
    """Training diverged (NaN/Inf loss) or collapsed; the last good weights are kept."""

    exit_code = EXIT_RUNTIME


class RunLockedError(CompressError):
    """Another run holds the output directory's lock."""


class GateFailed(CompressError):
    """One or more quality gates failed; the report says which."""

    exit_code = EXIT_GATE_FAILED


class PathError(CompressError):
    """A path the user gave cannot be used (permission denied, a file where a folder belongs)."""


class ResourceError(CompressError):
    """The machine ran out of something mid-run (memory, disk space)."""

    exit_code = EXIT_RUNTIME


# errno values that mean "the path you gave cannot be used", which the user fixes.
_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")

OOM_HINT = (
    "use a smaller data.batch_size (or the stage's batch_size) and bench.batch_sizes, "
    "precision: bf16, or a machine with more memory"
)


def is_out_of_memory(error: BaseException) -> bool:
    """True for Python's MemoryError and torch's out-of-memory errors (CPU or GPU)."""
    if isinstance(error, MemoryError):
        return True
    # torch.OutOfMemoryError (a RuntimeError) is matched by name so that this module stays
    # free of torch; CPU allocation failures are plain RuntimeErrors with a known message.
    names = {cls.__name__ for cls in type(error).__mro__}
    if "OutOfMemoryError" in names:
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _OOM_MESSAGES)


def explain(error: BaseException) -> CompressError | None:
    """A typed error naming the cause and the fix for an environment failure, or None.

    Maps out-of-memory to :class:`ResourceError` (exit 3), a full disk or quota to
    :class:`ResourceError` (exit 3) and permission denied / read-only file system to
    :class:`PathError` (exit 2: the user gave a path that cannot be written or read).
    Other ``OSError``s become a :class:`ResourceError` naming the file and the system's
    reason. Anything else returns None (an internal error).
    """
    if isinstance(error, CompressError):
        return error
    if is_out_of_memory(error):
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        return ResourceError("out of memory" + (f" ({first})" if first else ""), hint=OOM_HINT)
    code = error.errno if isinstance(error, OSError) else _rust_os_errno(error)
    if code is not None or isinstance(error, OSError):
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        what = (getattr(error, "strerror", None) or str(error) or type(error).__name__).strip()
        if code in _DISK_FULL_ERRNOS:
            return ResourceError(
                f"disk full: {what}{where}",
                hint="free disk space or choose another --out; finished stages are kept, "
                "so rerun with --resume",
            )
        if code in _PERMISSION_ERRNOS:
            return PathError(
                f"{what}{where}",
                hint="check the file's permissions, or choose a writable --out",
            )
        return ResourceError(f"{what}{where}", hint="check the file system and the path")
    return None


def _rust_os_errno(error: BaseException) -> int | None:
    # safetensors and tokenizers report I/O failures as their own exception types whose
    # message ends in "(os error 28)"; the errno is what says disk full or permission denied.
    match = re.search(r"\(os error (\d+)\)", str(error))
    return int(match.group(1)) if match else None


def disk_full_in(error: CompressError) -> CompressError:
    """``error``, or a :class:`ResourceError` with the disk-full fix when its message shows
    that an OS write failed for lack of space (an exporter's wrapped ``[Errno 28]``)."""
    match = re.search(r"\[Errno (\d+)\]|\(os error (\d+)\)", error.message)
    code = int(match.group(1) or match.group(2)) if match else None
    if code not in _DISK_FULL_ERRNOS:
        return error
    return ResourceError(
        f"disk full: {error.message}",
        hint="free disk space or choose another --out; finished stages are kept, so rerun "
        "with --resume",
    )


def first_line(text: str) -> str:
    """The line of an error message that names its cause."""
    # torch.export errors are long; their "Exception summary" line is what names the cause.
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    start = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("## Exception summary")), 0)
    if start >= len(lines):
        return "no details"
    found = lines[start]
    if found.endswith(":") and start + 1 < len(lines):  # "...were found:" + the first one
        found += " " + lines[start + 1]
    return found[:400]
