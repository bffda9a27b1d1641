"""Typed errors that carry what a user needs to act.

Every error a user can cause derives from :class:`CompressError`. The CLI prints its
message (never a traceback unless ``--debug``) and exits with its ``exit_code``:

* 0 success, 1 a quality gate failed, 2 bad input, 3 runtime failure, 130 interrupted.
"""

from __future__ import annotations

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
