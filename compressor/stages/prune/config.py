"""The ``prune`` stage's plan options: amount or target, criterion, scope, steps, widths for
transformers (``heads``, ``ffn``, ``layers``, ``hidden``), and the per-module patterns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from compressor.graph import (
    FFN,
    HEADS,
    HIDDEN,
    UnitGroup,
    check_amounts,
    check_pattern,
    first_match,
)
from compressor.graph.importance import CRITERIA
from compressor.spec.base import (
    CALIBRATION_DATA,
    EXAMPLE_INPUTS,
    LABELS,
    TRAIN_DATA,
    StageConfig,
    StrictModel,
)


class PruneTarget(StrictModel):
    """Prune until the model keeps at most this fraction of its parameters or MACs."""

    params: float | None = Field(None, gt=0, lt=1)
    macs: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> PruneTarget:
        if (self.params is None) == (self.macs is None):
            raise ValueError("give exactly one of 'params' or 'macs' (the fraction to keep)")
        return self

    @property
    def what(self) -> str:
        return "params" if self.params is not None else "macs"

    @property
    def keep(self) -> float:
        return self.params if self.params is not None else self.macs  # type: ignore[return-value]


class PruneConfig(StageConfig):
    amount: float | None = Field(
        None, ge=0, lt=1, description="Fraction of units (channels, neurons) removed per group."
    )
    target: PruneTarget | None = Field(
        None, description="Keep at most this fraction of the parameters or MACs."
    )
    criterion: Literal[CRITERIA] = Field(  # type: ignore[valid-type]
        "l2",
        description="How units are ranked (taylor needs labelled data, activation "
        "calibration data).",
    )
    scope: Literal["global", "per-layer"] = Field(
        "per-layer", description="Rank units within each group, or across all groups."
    )
    steps: int = Field(1, ge=1, le=100, description="Reach the amount/target in this many steps.")
    finetune_epochs: float = Field(
        1.0, ge=0, description="Fine-tuning between iterative steps (needs training data)."
    )
    finetune_lr: float = Field(1e-3, gt=0, description="Learning rate of that fine-tuning.")
    round_to: int | None = Field(None, ge=1, description="Keep widths multiples of this.")
    modules: list[str] = Field(
        default_factory=list, description="Only prune groups of these modules (names or re:)."
    )
    ignore: list[str] = Field(
        default_factory=list, description="Never touch these modules (names or re:)."
    )
    amounts: dict[str, float] = Field(
        default_factory=dict, description="Per-pattern fractions; the first match wins."
    )
    heads: float | None = Field(None, ge=0, lt=1, description="Fraction of attention heads.")
    ffn: float | None = Field(None, ge=0, lt=1, description="Fraction of transformer MLP width.")
    hidden: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Fraction of the hidden size (embedding width / residual stream); "
        "implies prune_hidden.",
    )
    layers: int | float | None = Field(
        None,
        description="Whole blocks (transformer layers) removed, least important first: a "
        "count (2) or a fraction of all blocks (0.25).",
    )
    prune_hidden: bool = Field(
        False, description="Also prune the hidden size (embedding width / residual stream)."
    )
    max_amount: float = Field(
        0.9, gt=0, lt=1, description="No group loses more than this fraction of its units."
    )
    calibration_batches: int = Field(
        8, ge=1, description="Batches used by the taylor and activation criteria."
    )
    gqa: Literal["groups", "within"] = Field(
        "groups",
        description="Decoder LLMs with grouped-query attention: remove whole key/value groups "
        "(a KV head with its query heads), or query heads within every group (groups kept).",
    )

    @field_validator("modules", "ignore")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        return [check_pattern(p) for p in value]

    @field_validator("amounts")
    @classmethod
    def _amounts(cls, value: dict[str, float]) -> dict[str, float]:
        return check_amounts(value)

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("give a block count (2) or a fraction of all blocks (0.25)")
        if isinstance(value, int) and value < 1:
            raise ValueError("a block count must be at least 1 (or give a fraction below 1)")
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError("a fraction of blocks must be in (0, 1); a count is a whole number")
        return value

    @model_validator(mode="after")
    def _something_to_do(self) -> PruneConfig:
        if self.amount is not None and self.target is not None:
            raise ValueError("give 'amount' or 'target', not both")
        if not self.prunes_width and self.layers is None:
            raise ValueError(
                "say how much to prune: 'amount', 'target', 'heads', 'ffn', 'hidden', "
                "'amounts' or 'layers'"
            )
        return self

    @property
    def prunes_width(self) -> bool:
        """Whether any width (channels, heads, hidden size) is to be pruned."""
        return bool(
            self.amount is not None
            or self.target is not None
            or self.heads is not None
            or self.ffn is not None
            or self.hidden is not None
            or self.amounts
        )

    @property
    def hidden_prunable(self) -> bool:
        return self.prune_hidden or self.hidden is not None

    def requirements(self) -> set[str]:
        needs = {EXAMPLE_INPUTS}
        if self.criterion == "taylor":
            needs |= {TRAIN_DATA, LABELS}
        if self.criterion == "activation":
            needs.add(CALIBRATION_DATA)
        return needs


def fixed_amount(group: UnitGroup, cfg: PruneConfig) -> float | None:
    """The fraction the plan sets for this group (None: the target search decides)."""
    pattern = first_match(cfg.amounts, group.names)
    if pattern is not None:
        return cfg.amounts[pattern]
    if group.kind == HEADS and cfg.heads is not None:
        return cfg.heads
    if FFN in group.tags and cfg.ffn is not None:
        return cfg.ffn
    if HIDDEN in group.tags and cfg.hidden is not None:
        return cfg.hidden
    if cfg.target is None:
        return cfg.amount if cfg.amount is not None else 0.0
    return None
