"""The ``distill`` stage's plan options: losses and their weights, the teacher cache, data
modes (synthetic, unlabelled, few-shot), augmentation, self-distilled pruning, training."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from compressor.data.sources import parse_source
from compressor.errors import CompressError
from compressor.spec.base import EXAMPLE_INPUTS, LABELS, TEACHER, TRAIN_DATA
from compressor.stages.distill.augment import AugmentConfig
from compressor.stages.distill.losses import CrossCorrelationConfig, HiddenConfig
from compressor.stages.distill.self_prune import SelfPruneConfig
from compressor.training.aligned import AlignedConfig
from compressor.training.loop import TrainingOptions


class DistillConfig(TrainingOptions):
    teacher: Literal["plan", "input"] = Field(
        "plan",
        description="plan: the plan's teacher (the original model by default); input: "
        "a frozen copy of the model as this stage receives it (self-distillation).",
    )
    kd: float = Field(1.0, ge=0, description="Weight of logit distillation.")
    temperature: float = Field(4.0, gt=0)
    kd_loss: Literal["auto", "kl", "mse", "cosine"] = Field(
        "auto", description="auto: kl for class logits, cosine/mse for embedding metrics."
    )
    task: float | Literal["auto"] = Field(
        "auto", description="Weight of the task loss; auto: 1 when the data has labels, else 0."
    )
    hidden: HiddenConfig | None = Field(
        None, description="Match named layer outputs (a projection bridges unequal widths)."
    )
    cross_correlation: CrossCorrelationConfig | None = Field(
        None, description="Cross-correlation between student and teacher representations."
    )
    cache_teacher: Literal["auto"] | bool = Field(
        "auto",
        description="Run the teacher once over the data and reuse its outputs (auto: when "
        "training sees each example more than once and the outputs fit in 256 MiB).",
    )
    cache_file: str | None = Field(
        None,
        description="Also keep the teacher cache in this file (relative to the plan), "
        "reused by later runs of the same plan.",
    )
    data: str = Field(
        "auto",
        description="train, synthetic, a data source of unlabelled inputs (e.g. "
        "corpus.txt), or auto (train when the plan has it, else synthetic).",
    )
    synthetic_size: int = Field(1024, ge=2, description="Number of synthetic examples.")
    synthetic_steps: int = Field(
        50,
        ge=0,
        description="Optimise synthetic float inputs for this many steps so the "
        "teacher sees in-distribution inputs (DeepInversion-style); 0: plain random draws.",
    )
    freeze_norm: Literal["auto"] | bool = Field(
        "auto",
        description="Keep batch-norm statistics fixed while training (auto: on "
        "synthetic data, whose statistics are not the real data's).",
    )
    augment: AugmentConfig | None = Field(
        None,
        description="Add altered copies of the training text: tokens replaced by their "
        "nearest neighbours in the model's embedding table (TinyBERT-style).",
    )
    group_by_length: bool = Field(
        False,
        description="Batch token examples of similar length together (padding is cut per "
        "batch, so a step costs what its real tokens cost). Needs an attention_mask input.",
    )
    few_shot: int | None = Field(
        None, ge=1, description="Train on only this many labelled examples per class."
    )
    aligned: AlignedConfig | None = Field(
        None, description="Keep kept units close to their pretrained weights (value, direction)."
    )
    prune: SelfPruneConfig | None = Field(
        None, description="Prune while distilling (self-distilled pruning)."
    )

    @field_validator("task")
    @classmethod
    def _task_not_negative(cls, value: Any) -> Any:
        if isinstance(value, float) and value < 0:
            raise ValueError("task must be >= 0 or 'auto'")
        return value

    @model_validator(mode="after")
    def _augment_has_no_labels(self) -> DistillConfig:
        if self.augment is not None and not isinstance(self.task, str) and self.task > 0:
            raise ValueError(
                "augment alters sentences, so their labels no longer hold: set task to 0 "
                "or auto with augment"
            )
        return self

    @field_validator("data")
    @classmethod
    def _data_source(cls, value: str) -> str:
        if value not in ("auto", "train", "synthetic"):
            try:
                parse_source(value)
            except CompressError as e:
                raise ValueError(f"{e.message}; or use auto, train or synthetic") from None
        return value

    def requirements(self) -> set[str]:
        needs = {EXAMPLE_INPUTS}
        if self.teacher == "plan":
            needs.add(TEACHER)
        if self.data == "train" or self.few_shot is not None:
            needs.add(TRAIN_DATA)
        if self.few_shot is not None or (
            not isinstance(self.task, str) and self.task > 0 and self.data in ("train", "auto")
        ):
            needs |= {TRAIN_DATA, LABELS}
        if self.prune is not None:
            # The block's criterion ranks units when distillation gradients do not (yet).
            needs |= self.prune.requirements()
        return needs
