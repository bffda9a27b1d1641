"""The ``prune`` stage: structured pruning that physically removes units."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressor.config_base import StrictModel
from compressor.stages.registry import (
    CALIBRATION_DATA,
    EXAMPLE_INPUTS,
    LABELS,
    TRAIN_DATA,
    StageConfig,
    register_stage,
)


class PruneTarget(StrictModel):
    """Prune until the model keeps this fraction of its parameters or MACs."""

    params: float | None = Field(None, gt=0, lt=1)
    macs: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> PruneTarget:
        if (self.params is None) == (self.macs is None):
            raise ValueError("give exactly one of 'params' or 'macs' (the fraction to keep)")
        return self


class PruneConfig(StageConfig):
    amount: float | None = Field(
        None, ge=0, lt=1, description="Fraction of units (channels, neurons) removed per group."
    )
    target: PruneTarget | None = None
    criterion: Literal["l1", "l2", "taylor", "activation", "bn-scale", "random"] = "l2"
    scope: Literal["global", "per-layer"] = "per-layer"
    steps: int = Field(1, ge=1, le=100)
    finetune_epochs: float = Field(
        1.0, ge=0, description="Fine-tuning between iterative steps (needs training data)."
    )
    round_to: int | None = Field(None, ge=1)
    modules: list[str] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=list)
    amounts: dict[str, float] = Field(default_factory=dict)
    heads: float | None = Field(None, ge=0, lt=1)
    ffn: float | None = Field(None, ge=0, lt=1)
    calibration_batches: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _something_to_do(self) -> PruneConfig:
        if self.amount is not None and self.target is not None:
            raise ValueError("give 'amount' or 'target', not both")
        if self.amount is None and self.target is None and self.heads is None and self.ffn is None:
            raise ValueError("say how much to prune: 'amount', 'target', 'heads' or 'ffn'")
        return self

    def requirements(self) -> set[str]:
        needs = {EXAMPLE_INPUTS}
        if self.criterion == "taylor":
            needs |= {TRAIN_DATA, LABELS}
        if self.criterion == "activation":
            needs.add(CALIBRATION_DATA)
        return needs


@register_stage("prune", PruneConfig, "Structured pruning: remove whole units, physically.")
def apply(model, cfg: PruneConfig, ctx):
    raise NotImplementedError("prune stage: being built")
