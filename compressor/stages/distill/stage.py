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
has no training data). ``few_shot: N`` keeps N labelled examples per class."""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn as nn

from compressor.data.batches import make_loader
from compressor.data.padding import example_lengths
from compressor.errors import StageError
from compressor.formats.hf.tokenizer import tokenizer_text
from compressor.stages.distill.augment import (
    augment_tokens,
    input_embedding_table,
    replaceable_ids,
    token_data,
)
from compressor.stages.distill.config import DistillConfig
from compressor.stages.distill.losses import DistillObjective
from compressor.stages.distill.self_prune import SelfPruner, norms_eval
from compressor.stages.distill.synthetic import has_labels, refine_synthetic, training_dataset
from compressor.stages.distill.teacher_cache import indexed_loader, is_map_style, setup_cache
from compressor.stages.prune.decoder import is_decoder
from compressor.stages.registry import (
    register_stage,
)
from compressor.training.aligned import AlignedRegularizer
from compressor.training.loop import train


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

    loader = make_loader(dataset, batch_size, shuffle=True, seed=ctx.stage_seed())
    return loader, next(iter(loader))


def _augment(dataset: Any, model: nn.Module, cfg: Any, ctx: Any):
    """The training examples plus their altered copies (see ``stages.distill.augment``)."""

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
            if cfg.parallel == "fsdp":
                raise StageError(
                    "distill.prune changes the model's shapes while it trains, and parallel: "
                    "fsdp trains fixed shards of it",
                    hint="prune in a prune stage before distill, or use parallel: ddp",
                )
            if is_decoder(model):
                raise StageError(
                    "distill.prune (pruning while distilling) works through the graph engine, "
                    "which decoder LLMs are not pruned through",
                    hint="put a prune stage (heads/ffn/layers/hidden) before distill: the "
                    "original still teaches the pruned model",
                )
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
            # Under fsdp a sharded copy trains: the student's feature taps move onto it.
            on_wrap=objective.attach,
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
