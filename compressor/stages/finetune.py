"""The ``finetune`` stage: train the (compressed) model on the task's labelled data."""

from __future__ import annotations

from pydantic import Field

from compressor.forward import call_model, is_causal_lm, primary_output
from compressor.stages.registry import register_stage
from compressor.training.aligned import AlignedConfig, AlignedRegularizer
from compressor.training.loop import TrainingOptions, task_loss, train


class FinetuneConfig(TrainingOptions):
    few_shot: int | None = Field(
        None, ge=1, description="Train on only this many labelled examples per class."
    )
    aligned: AlignedConfig | None = Field(
        None, description="Keep kept units close to their pretrained weights (value, direction)."
    )


@register_stage("finetune", FinetuneConfig, "Fine-tune on labelled training data.")
def apply(model, cfg: FinetuneConfig, ctx):
    loader = ctx.train_loader(batch_size=cfg.batch_size, few_shot=cfg.few_shot)

    regularizer = None
    if cfg.aligned is not None:
        regularizer = AlignedRegularizer.from_context(cfg.aligned, ctx)
        ctx.stage_report["aligned"] = regularizer.attach(model)

    def loss_fn(m, batch):
        out = primary_output(call_model(m, batch.inputs))
        loss = task_loss(out, batch.target, causal=is_causal_lm(m))
        if regularizer is None:
            return loss, {}
        reg, logs = regularizer(m)
        return loss + reg, logs

    summary = train(model, cfg, ctx, loss_fn, loader=loader, description="finetune")
    ctx.stage_report["training"] = summary.to_dict()
    return model
