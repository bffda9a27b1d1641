"""The stage registry: a stage is one config class plus one ``apply`` function.

Adding a method = one config class, one function registered here, one test file. The plan's
``stages:`` list is a discriminated union built from this registry, so callers never branch
on stage names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compressor.spec.base import (
    StageConfig,
)

if TYPE_CHECKING:
    import torch.nn as nn

    from compressor.stages.context import StageContext

ApplyFn = Callable[["nn.Module", Any, "StageContext"], "nn.Module"]
# A plan-level check a stage registers (plan -> problems): checks that look at the whole plan,
# such as stage order, run with every other plan check, before any weights load.
PlanCheck = Callable[[Any], list[str]]


@dataclass(frozen=True)
class StageDef:
    name: str
    config: type[StageConfig]
    apply: ApplyFn
    summary: str
    plan_check: PlanCheck | None = None


_REGISTRY: dict[str, StageDef] = {}


def register_stage(
    name: str, config: type[StageConfig], summary: str, plan_check: PlanCheck | None = None
):
    """Register ``fn(model, cfg, ctx) -> model`` as the stage ``name`` configured by ``config``.

    ``plan_check(plan) -> [problem, ...]``, when given, runs in ``compress validate`` and before
    every run for plans that use the stage (plan checking never names a stage itself).
    """

    def decorator(fn: ApplyFn) -> ApplyFn:
        if name in _REGISTRY and _REGISTRY[name].apply is not fn:
            raise ValueError(f"stage {name!r} is registered twice")
        _REGISTRY[name] = StageDef(
            name=name, config=config, apply=fn, summary=summary, plan_check=plan_check
        )
        return fn

    return decorator


def stage_defs() -> dict[str, StageDef]:
    """All registered stages, by name, in registration order."""
    return dict(_REGISTRY)


def get_stage(name: str) -> StageDef:
    return _REGISTRY[name]
