"""Base classes of the plan's configuration models (strict: unknown keys are errors), and
what a stage can need from a plan. Kept outside ``compressor.stages`` so that modules the
stages import (e.g. the training loop) can use them without an import cycle."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys and validates assignments."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


def number_as_weight(value: Any) -> Any:
    """For ``mode="before"`` validators: a bare number in the plan means ``{weight: N}``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"weight": value}
    return value


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
