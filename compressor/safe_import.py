"""The one importer of ``package.module:attr`` strings, and the safe-mode policy: which
module prefixes whoever runs compress allowed (``--allow-import``,
``COMPRESS_ALLOW_IMPORTS``), and which modules a file's metadata may never name."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from compressor.errors import CheckpointError, CompressError

# Modules whose callables must never be named as a model factory by a file's metadata:
# calling them with attacker-chosen keyword arguments runs commands or fetches code.
_NEVER_FACTORIES = {
    "builtins",
    "os",
    "subprocess",
    "sys",
    "shutil",
    "importlib",
    "runpy",
    "pickle",
    "marshal",
    "ctypes",
    "socket",
    "torch.hub",
    "pty",
    "code",
    "codeop",
    "webbrowser",
}


# Import prefixes allowed in safe mode for the run in progress (``--allow-import``). Held in
# a context variable so that every import a run makes (architecture, teacher, data source,
# a resumed stage file) sees the allowance without threading it through each call.
_RUN_ALLOWED: ContextVar[tuple[str, ...]] = ContextVar("compress_allowed_imports", default=())


def _env_allowed_prefixes() -> list[str]:
    raw = os.environ.get("COMPRESS_ALLOW_IMPORTS", "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def split_prefixes(items: Iterable[str] | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (``--allow-import`` may repeat or use commas)."""
    return [p.strip() for item in items or [] for p in item.split(",") if p.strip()]


def allowed_import_prefixes(extra: Iterable[str] | None = None) -> list[str]:
    """Every module prefix safe mode allows: ``extra``, the run's, ``COMPRESS_ALLOW_IMPORTS``."""
    return [*split_prefixes(extra), *_RUN_ALLOWED.get(), *_env_allowed_prefixes()]


def is_import_allowed(module_name: str, extra: Iterable[str] | None = None) -> bool:
    """True when ``module_name`` is one of the allowed prefixes or inside one (``pkg.sub``)."""
    return any(
        module_name == p or module_name.startswith(p + ".") for p in allowed_import_prefixes(extra)
    )


@contextlib.contextmanager
def allowed_imports(prefixes: Iterable[str] | None) -> Iterator[None]:
    """Allow imports from ``prefixes`` in safe mode for the duration of the block.

    The allowance comes from whoever runs compress (``--allow-import``), never from the plan
    or a file, which are what safe mode distrusts.
    """
    token = _RUN_ALLOWED.set((*_RUN_ALLOWED.get(), *split_prefixes(prefixes)))
    try:
        yield
    finally:
        _RUN_ALLOWED.reset(token)


def resolve_import(
    ref: str,
    *,
    what: str,
    safe: bool = False,
    from_file_metadata: bool = False,
    allowed_prefixes: list[str] | None = None,
    error: type[CompressError] = CheckpointError,
    noun: str = "",
    refusal_hint: str | None = None,
) -> Any:
    """Import ``package.module:attr`` and return the attribute.

    Args:
        ref: the import string.
        what: how to name it in errors (e.g. "model.architecture").
        safe: refuse unless the module is in ``allowed_prefixes``, the prefixes allowed for the
            run (:func:`allowed_imports`, ``--allow-import``) or ``COMPRESS_ALLOW_IMPORTS``.
        from_file_metadata: the string came from a file, not from the user: refuse the standard
            library and other modules whose callables could run commands.
        error: the error type to raise (the caller's domain: a checkpoint, a data source).
        noun: a word naming what is imported in messages ("module ").
        refusal_hint: what to do instead when safe mode refuses (default: allow the import).

    Raises:
        ``error`` (CheckpointError by default): the import is refused, fails, or the attribute
        does not exist.

    This is the one importer of ``module:attr`` strings (architectures, teachers, data sources,
    resumed stage files), so the safe-mode guard is the same everywhere.
    """
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise error(f"{what}: {ref!r} is not of the form 'package.module:function'")
    top = module_name.split(".")[0]
    if safe and not is_import_allowed(module_name, allowed_prefixes):
        raise error(
            f"{what}: importing {module_name!r} runs its code, which safe mode refuses",
            hint=refusal_hint
            or f"allow it with --allow-import {top} (or COMPRESS_ALLOW_IMPORTS={top}), or run "
            "without safe mode",
        )
    if from_file_metadata and (
        top in sys.stdlib_module_names
        or any(module_name == m or module_name.startswith(m + ".") for m in _NEVER_FACTORIES)
    ):
        raise error(
            f"{what}: the file names {ref!r} as its architecture, which is not a model factory",
            hint="the file may be malicious; pass the architecture explicitly if you trust it",
        )
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # architectures are often modules of the project
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise error(
            f"{what}: cannot import {noun}{module_name!r} ({e})",
            hint="check the spelling, that the package is installed, or run from the folder "
            "that holds the module",
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(
                f"{what}: module {module_name!r} has no attribute {attr!r}",
                hint=f"names it does have: {', '.join(sorted(_public_names(module))[:12])}",
            )
        obj = getattr(obj, part)
    return obj


def _public_names(module: Any) -> list[str]:
    return [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
