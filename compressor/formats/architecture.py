"""How to build a model's original architecture: a factory import or a Hugging Face config.

An :class:`ArchitectureRef` travels in the metadata of every exported file so that
``compressor.load`` can rebuild the compacted model without pickle: build the original,
then replay the structure manifest (see ``compressor.formats.manifest``)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from compressor.errors import CheckpointError
from compressor.safe_import import resolve_import

Builder = Callable[["ArchitectureRef", bool], nn.Module]


_BUILDERS: dict[str, Builder] = {}


def register_builder(kind: str, builder: Builder) -> None:
    """Register how architectures of ``kind`` are built ("hf": ``compressor.formats.hf.load``)."""
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
