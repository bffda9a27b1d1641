"""The stage registry: a stage is one config class plus one ``apply`` function.

Adding a method = one config class, one function registered here, one test file. The plan's
``stages:`` list is a discriminated union built from this registry, so callers never branch
on stage names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compressor.config_base import (  # noqa: F401  (re-exported: stages import them here)
    CALIBRATION_DATA,
    EVAL_DATA,
    EXAMPLE_INPUTS,
    LABELS,
    REQUIREMENTS,
    TEACHER,
    TRAIN_DATA,
    StageConfig,
)

if TYPE_CHECKING:
    import torch.nn as nn

    from compressor.context import RunContext

ApplyFn = Callable[["nn.Module", Any, "RunContext"], "nn.Module"]


@dataclass(frozen=True)
class StageDef:
    name: str
    config: type[StageConfig]
    apply: ApplyFn
    summary: str


_REGISTRY: dict[str, StageDef] = {}


def register_stage(name: str, config: type[StageConfig], summary: str):
    """Register ``fn(model, cfg, ctx) -> model`` as the stage ``name`` configured by ``config``."""

    def decorator(fn: ApplyFn) -> ApplyFn:
        if name in _REGISTRY and _REGISTRY[name].apply is not fn:
            raise ValueError(f"stage {name!r} is registered twice")
        _REGISTRY[name] = StageDef(name=name, config=config, apply=fn, summary=summary)
        return fn

    return decorator


def stage_defs() -> dict[str, StageDef]:
    """All registered stages, by name, in registration order."""
    return dict(_REGISTRY)


def get_stage(name: str) -> StageDef:
    return _REGISTRY[name]
