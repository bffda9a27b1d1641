"""The stage registry: a stage is one config class plus one ``apply`` function.

Adding a method = one config class, one function registered here, one test file. The plan's
``stages:`` list is a discriminated union built from this registry, so callers never branch
on stage names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compressor.config_base import StrictModel

if TYPE_CHECKING:
    import torch.nn as nn

    from compressor.context import RunContext

# What a stage can need from the plan, checked before any weights load.
TRAIN_DATA = "train_data"  # data.train
LABELS = "labels"  # labelled training data (data.train with targets)
CALIBRATION_DATA = "calibration_data"  # data.calibration or data.train
EVAL_DATA = "eval_data"  # data.eval
TEACHER = "teacher"  # a teacher model (teacher: original or a checkpoint)
EXAMPLE_INPUTS = "example_inputs"  # model.inputs (or an HF model that implies them)
REQUIREMENTS = (TRAIN_DATA, LABELS, CALIBRATION_DATA, EVAL_DATA, TEACHER, EXAMPLE_INPUTS)


class StageConfig(StrictModel):
    """Base of every stage's config. Subclasses say what they need from the plan."""

    def requirements(self) -> set[str]:
        """The plan parts this stage needs (see the constants above)."""
        return {EXAMPLE_INPUTS}


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
