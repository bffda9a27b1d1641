"""How to build a model's original architecture: a factory import or a Hugging Face config.

An :class:`ArchitectureRef` travels in the metadata of every exported file so that
``compressor.load`` can rebuild the compacted model without pickle: build the original,
then replay the structure manifest (see ``compressor.structure``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from compressor.errors import CheckpointError

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
) -> Any:
    """Import ``package.module:attr`` and return the attribute.

    Args:
        ref: the import string.
        what: how to name it in errors (e.g. "model.architecture").
        safe: refuse unless the module is in ``allowed_prefixes``, the prefixes allowed for the
            run (:func:`allowed_imports`, ``--allow-import``) or ``COMPRESS_ALLOW_IMPORTS``.
        from_file_metadata: the string came from a file, not from the user: refuse the standard
            library and other modules whose callables could run commands.

    Raises:
        CheckpointError: the import is refused, fails, or the attribute does not exist.
    """
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise CheckpointError(f"{what}: {ref!r} is not of the form 'package.module:function'")
    top = module_name.split(".")[0]
    if safe and not is_import_allowed(module_name, allowed_prefixes):
        raise CheckpointError(
            f"{what}: importing {module_name!r} runs its code, which safe mode refuses",
            hint="allow it with --allow-import "
            f"{top} (or COMPRESS_ALLOW_IMPORTS={top}), or run without safe mode",
        )
    if from_file_metadata and (
        top in sys.stdlib_module_names
        or any(module_name == m or module_name.startswith(m + ".") for m in _NEVER_FACTORIES)
    ):
        raise CheckpointError(
            f"{what}: the file names {ref!r} as its architecture, which is not a model factory",
            hint="the file may be malicious; pass the architecture explicitly if you trust it",
        )
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # architectures are often modules of the project
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise CheckpointError(
            f"{what}: cannot import {module_name!r} ({e})",
            hint="check the spelling, that the package is installed, or run from the folder "
            "that holds the module",
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CheckpointError(
                f"{what}: module {module_name!r} has no attribute {attr!r}",
                hint=f"names it does have: {', '.join(sorted(_public_names(module))[:12])}",
            )
        obj = getattr(obj, part)
    return obj


def _public_names(module: Any) -> list[str]:
    return [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]


Builder = Callable[["ArchitectureRef", bool], nn.Module]
_BUILDERS: dict[str, Builder] = {}


def register_builder(kind: str, builder: Builder) -> None:
    """Register how architectures of ``kind`` are built (e.g. "hf" by ``compressor.hf``)."""
    _BUILDERS[kind] = builder


@dataclass
class ArchitectureRef:
    """A JSON-serialisable recipe for the original (uncompressed) model."""

    kind: str  # "factory" | "hf"
    ref: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # builder-specific (e.g. an HF config)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref": self.ref, "kwargs": self.kwargs, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchitectureRef:
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("kind"), str)
            or not isinstance(data.get("ref"), (str, type(None)))
            or not isinstance(data.get("kwargs") or {}, dict)
            or not isinstance(data.get("extra") or {}, dict)
        ):
            raise CheckpointError(
                "the file's architecture metadata is malformed (want kind, ref, kwargs, extra)",
                hint="the file is damaged or not written by compress: export it again",
            )
        return cls(
            kind=str(data["kind"]),
            ref=data.get("ref"),
            kwargs=dict(data.get("kwargs") or {}),
            extra=dict(data.get("extra") or {}),
        )

    def build(self, *, safe: bool = False, from_file_metadata: bool = False) -> nn.Module:
        """Build the original architecture with fresh weights."""
        if self.kind == "factory":
            if not self.ref:
                raise CheckpointError("architecture metadata names no factory")
            factory = resolve_import(
                self.ref, what="architecture", safe=safe, from_file_metadata=from_file_metadata
            )
            return call_factory(factory, self.ref, self.kwargs)
        if self.kind == "hf" and "hf" not in _BUILDERS:
            import compressor.hf  # noqa: F401  (registers the "hf" builder)
        if self.kind not in _BUILDERS:
            raise CheckpointError(f"unknown architecture kind {self.kind!r}")
        return _BUILDERS[self.kind](self, safe)


def call_factory(factory: Any, ref: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call a model factory (or nn.Module class) and check it returns an nn.Module."""
    if not callable(factory):
        raise CheckpointError(f"architecture {ref!r} is not callable")
    try:
        model = factory(**kwargs)
    except TypeError as e:
        params = ""
        with contextlib.suppress(TypeError, ValueError):  # builtins may have no signature
            params = f" (it takes {inspect.signature(factory)})"
        raise CheckpointError(
            f"architecture {ref!r} could not be called with kwargs {kwargs}: {e}{params}",
            hint="fix model.kwargs",
        ) from None
    if not isinstance(model, nn.Module):
        raise CheckpointError(
            f"architecture {ref!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model
