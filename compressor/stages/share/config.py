"""The ``share`` stage's plan options: one config per method (merge-neurons, fuse-layers,
cluster-weights), a discriminated union on ``method``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from compressor.graph import check_amounts, check_pattern
from compressor.spec.base import CALIBRATION_DATA, EXAMPLE_INPUTS, StageConfig
from compressor.stages.share.similarity import MEASURES as LAYER_MEASURES


class _Targeted(StageConfig):
    modules: list[str] = Field(
        default_factory=list, description="Only these modules (names or re: patterns)."
    )
    ignore: list[str] = Field(
        default_factory=list, description="Never touch these modules (names or re:)."
    )

    @field_validator("modules", "ignore")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        return [check_pattern(p) for p in value]


class MergeNeuronsConfig(_Targeted):
    """Merge alike units of each prunable group into one, folding their outgoing weights."""

    method: Literal["merge-neurons"]
    amount: float | None = Field(
        None, ge=0, lt=1, description="Fraction of units removed (merged away) per group."
    )
    amounts: dict[str, float] = Field(
        default_factory=dict, description="Per-pattern fractions; the first match wins."
    )
    threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Merge only pairs at least this similar (with amount/amounts: a cap).",
    )
    similarity: Literal["l2", "cosine"] = Field(
        "l2",
        description="l2: residual after the best positive scale, times the outgoing weight; "
        "cosine: angle only.",
    )
    by: Literal["weights", "activations"] = Field(
        "weights", description="Compare incoming weights, or activations on calibration data."
    )
    recalibrate: Literal["auto"] | bool = Field(
        "auto",
        description="Re-estimate the batch-norm statistics after inexact merges on "
        "calibration data (no training); auto: when the plan has that data.",
    )
    calibration_batches: int = Field(8, ge=1, description="Batches used for activations/norms.")
    round_to: int | None = Field(None, ge=1, description="Keep widths multiples of this.")
    max_amount: float = Field(
        0.9, gt=0, lt=1, description="No group loses more than this fraction of its units."
    )

    @field_validator("amounts")
    @classmethod
    def _amounts(cls, value: dict[str, float]) -> dict[str, float]:
        return check_amounts(value)

    @model_validator(mode="after")
    def _something_to_do(self) -> MergeNeuronsConfig:
        if self.amount is None and not self.amounts and self.threshold is None:
            raise ValueError("say how much to merge: 'amount', 'amounts' or 'threshold'")
        return self

    def requirements(self) -> set[str]:
        needs = {EXAMPLE_INPUTS}
        if self.by == "activations" or self.recalibrate is True:
            needs.add(CALIBRATION_DATA)
        return needs


class FuseLayersConfig(_Targeted):
    """Tie the most alike layers of equal type and shape to one shared parameter."""

    method: Literal["fuse-layers"]
    amount: float | None = Field(
        None, gt=0, le=0.5, description="Fraction of the candidate layers tied to another."
    )
    pairs: int | None = Field(None, ge=1, description="Number of pairs to tie.")
    threshold: float | None = Field(
        None, description="Tie every pair at least this similar (with amount/pairs: a cap)."
    )
    similarity: Literal[LAYER_MEASURES] = Field(  # type: ignore[valid-type]
        "cosine", description="cosine, cka, covariance or wasserstein."
    )
    tie: Literal["mean", "first"] = Field(
        "mean", description="The shared value: the mean of the pair, or the first layer's."
    )
    bias: bool = Field(True, description="Tie the biases too.")
    min_params: int = Field(1024, ge=0, description="Skip layers with fewer weights.")

    @model_validator(mode="after")
    def _something_to_do(self) -> FuseLayersConfig:
        if self.amount is not None and self.pairs is not None:
            raise ValueError("give 'amount' or 'pairs', not both")
        if self.amount is None and self.pairs is None and self.threshold is None:
            raise ValueError("say how much to fuse: 'amount', 'pairs' or 'threshold'")
        return self

    def requirements(self) -> set[str]:
        return set()


class ClusterWeightsConfig(_Targeted):
    """Put each weight tensor on a k-entry codebook (storage only)."""

    method: Literal["cluster-weights"]
    k: int = Field(16, ge=2, le=256, description="Codebook entries per tensor (<=16: 4 bits).")
    tensors: Literal["weights", "all"] = Field(
        "weights", description="Layer weights only, or every float parameter."
    )
    min_numel: int = Field(
        1024, ge=1, description="Skip smaller tensors (the file codebook-encodes >= 1024)."
    )
    iterations: int = Field(30, ge=1, le=1000, description="k-means iterations at most.")

    def requirements(self) -> set[str]:
        return set()
