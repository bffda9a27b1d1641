"""The ``distill`` stage: train the (compressed) student to match a teacher.

The objective is a weighted sum of logit KD (KL at a temperature, T²-scaled), hidden-state
matching on named layers (with a least-squares-initialised linear projection where widths
differ), the cross-correlation objective between student and teacher representations, the
task loss when the data has labels, and optionally the aligned weight regulariser.

With a ``prune:`` block the stage prunes while it distils (self-distilled pruning): the
unpruned teacher teaches the shrinking student, the amount pruned follows a cubic (or linear)
schedule over the training steps, and units are ranked by first-order (Taylor) importance
computed from the gradients of the distillation objective.

Data: the plan's training data, an unlabelled source (``data: corpus.txt``), or synthetic
inputs matching ``model.inputs`` (``data: synthetic``; ``auto`` falls back to it when the plan
has no training data). ``few_shot: N`` keeps N labelled examples per class.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, field_validator, model_validator

from compressor.augment import AugmentConfig
from compressor.errors import StageError
from compressor.losses import CrossCorrelationConfig, DistillObjective, HiddenConfig
from compressor.padding import example_lengths
from compressor.regularization import AlignedConfig, AlignedRegularizer
from compressor.stages.registry import (
    EXAMPLE_INPUTS,
    LABELS,
    TEACHER,
    TRAIN_DATA,
    register_stage,
)
from compressor.stages.self_prune import SelfPruneConfig, SelfPruner, norms_eval
from compressor.synthetic import has_labels, refine_synthetic, training_dataset
from compressor.teacher_cache import indexed_loader, is_map_style, setup_cache
from compressor.training import TrainingOptions, train


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
            from compressor.data import parse_source
            from compressor.errors import CompressError

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


def _snapshot(model: nn.Module, ctx: Any) -> tuple[float, dict[str, torch.Tensor]] | None:
    """The model's metric and a copy of its weights (None without evaluation data)."""
    metric = ctx.evaluate(model)
    if metric is None:
        return None
    return metric, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worse(metric: float | None, before: float, ctx: Any) -> bool:
    if metric is None:
        return False
    return metric < before if ctx.metric().higher_is_better else metric > before


def _passes(cfg: DistillConfig, batch_size: int, examples: int) -> float:
    """How many times training will see each example (epochs, or fewer with max_steps)."""
    if cfg.max_steps is None:
        return cfg.epochs
    return min(cfg.epochs, cfg.max_steps * batch_size / max(1, examples))


def _teacher(model: nn.Module, cfg: DistillConfig, ctx: Any) -> nn.Module:
    if cfg.teacher == "input":
        return ctx.frozen_copy(model).to(ctx.device)
    teacher = ctx.teacher()
    if teacher is None:
        raise StageError(
            "distill needs a teacher and the plan has teacher: none",
            hint="set teacher: original, a checkpoint, or distill.teacher: input",
        )
    return teacher


def _loaders(dataset: Any, batch_size: int, ctx: Any, group_by_length: bool = False):
    """The shuffled training loader and one fixed calibration batch (projections, norms)."""
    if is_map_style(dataset):
        lengths = example_lengths(dataset) if group_by_length else None
        if group_by_length and lengths is None:
            raise StageError(
                "distill.group_by_length needs token inputs with an attention_mask",
                hint="remove group_by_length for this model's data",
            )
        loader = indexed_loader(
            dataset,
            batch_size,
            shuffle=True,
            seed=ctx.stage_seed(),
            distributed=ctx.distributed,
            lengths=lengths,
        )
        calib = indexed_loader(dataset, min(len(dataset), 256), shuffle=False, seed=0)
        return loader, next(iter(calib))
    from compressor.data import make_loader

    loader = make_loader(dataset, batch_size, shuffle=True, seed=ctx.stage_seed())
    return loader, next(iter(loader))


def _augment(dataset: Any, model: nn.Module, cfg: Any, ctx: Any):
    """The training examples plus their altered copies (see :mod:`compressor.augment`)."""
    import json

    from compressor.augment import (
        augment_tokens,
        input_embedding_table,
        replaceable_ids,
        token_data,
    )
    from compressor.hf import tokenizer_text

    token_data(dataset)  # the data first: an image model has no token table either
    table = input_embedding_table(model)
    text = tokenizer_text(model)
    allowed = replaceable_ids(json.loads(text) if text else None, table.shape[0])
    return augment_tokens(dataset, table, cfg, seed=ctx.stage_seed(3), allowed=allowed)


@register_stage(
    "distill",
    DistillConfig,
    "Distil from a teacher (KD, hidden states, cross-correlation); can prune too.",
)
def apply(model, cfg: DistillConfig, ctx):
    teacher = _teacher(model, cfg, ctx)
    model.to(ctx.device)
    dataset, source = training_dataset(
        ctx, cfg.data, few_shot=cfg.few_shot, synthetic_size=cfg.synthetic_size
    )
    batch_size = cfg.batch_size or ctx.plan.data.batch_size
    augmented = None
    if cfg.augment is not None:
        dataset, augmented = _augment(dataset, model, cfg.augment, ctx)
    objective = DistillObjective(cfg, model, teacher, ctx, has_labels(dataset))
    report: dict[str, Any] = {
        "data": source,
        **({"augment": augmented} if augmented is not None else {}),
        "kd_loss": objective.kd_kind,
        "task_weight": objective.task_weight,
        "layers": [[s, t] for _, s, t in objective.pairs],
    }
    try:  # from here on the objective's hooks sit on the teacher: always remove them
        synthetic = source.startswith("synthetic")
        if synthetic:
            dataset, report["synthetic"] = refine_synthetic(
                teacher,
                dataset,
                ctx.input_specs,
                steps=cfg.synthetic_steps,
                classify=objective.kd_kind == "kl",
                seed=ctx.stage_seed(2),
            )
        freeze_norm = synthetic if cfg.freeze_norm == "auto" else cfg.freeze_norm
        report["freeze_norm"] = freeze_norm
        if is_map_style(dataset):
            report.update(
                setup_cache(
                    objective,
                    ctx,
                    dataset,
                    batch_size,
                    mode=cfg.cache_teacher,
                    file=cfg.cache_file,
                    source=source,
                    teacher_tag="plan" if cfg.teacher == "plan" else f"input@{ctx.stage_index}",
                    data_files=(cfg.data,),
                    passes=_passes(cfg, batch_size, len(dataset)),
                )
            )
        loader, calib = _loaders(dataset, batch_size, ctx, cfg.group_by_length)
        objective.calibration = calib.to(ctx.device)
        fitted = objective.fit_projections(model)
        if fitted:
            report["projections"] = fitted
        regularizer = None
        if cfg.aligned is not None:
            regularizer = AlignedRegularizer.from_context(cfg.aligned, ctx)
            report["aligned"] = regularizer.attach(model)
        pruner = None
        if cfg.prune is not None:
            pruner = SelfPruner(
                cfg.prune, model, ctx, objective, regularizer, recalibrate_norms=not freeze_norm
            )

        def loss_fn(m, batch):
            if freeze_norm:
                norms_eval(m)
            loss, logs = objective(m, batch)
            if regularizer is not None:
                reg, reg_logs = regularizer(m)
                loss, logs = loss + reg, {**logs, **reg_logs}
            return loss, logs

        # keep_best covers the weights the stage started from too: distillation on poor data
        # (synthetic inputs, a tiny corpus) can make a model worse, and then it is not kept.
        start = _snapshot(model, ctx) if cfg.keep_best and pruner is None else None
        report["metric_before"] = start[0] if start is not None else None
        summary = train(
            model,
            cfg,
            ctx,
            loss_fn,
            loader=loader,
            extra_params=objective.parameters,
            on_step=pruner.on_step if pruner is not None else None,
            description="distill",
        )
        if pruner is not None:
            pruner.finish()
            report["prune"] = pruner.report()
        if start is not None and _worse(summary.final_metric, start[0], ctx):
            model.load_state_dict(start[1])
            report["kept_input_weights"] = (
                f"training did not beat the input's metric ({summary.final_metric:.4f} vs "
                f"{start[0]:.4f}); the stage kept the weights it started from"
            )
            ctx.log(f"[yellow]warning:[/] distill: {report['kept_input_weights']}")
    finally:
        objective.close()
    report["training"] = summary.to_dict()
    ctx.stage_report.update(report)
    return model
