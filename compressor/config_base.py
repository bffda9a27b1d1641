"""The base class of every configuration model in a plan (strict: unknown keys are errors)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown keys and validates assignments."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
