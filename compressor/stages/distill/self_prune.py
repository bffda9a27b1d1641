"""Self-distilled pruning: prune while distilling (the ``prune:`` block of ``distill``).

The unpruned teacher teaches the shrinking student; the amount pruned follows a cubic (or
linear) schedule over the training steps, and units are ranked by first-order (Taylor)
importance computed from the gradients of the distillation objective. Batch-norm statistics
are re-estimated after each pruning step.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from compressor.forward import call_model
from compressor.graph.groups import channel_dims
from compressor.stages.distill.losses import DistillObjective
from compressor.stages.prune.config import PruneConfig
from compressor.stages.prune.stage import PruneState, prune_step
from compressor.training.aligned import AlignedRegularizer


class SelfPruneConfig(PruneConfig):
    """``distill.prune``: the prune stage's options plus when to prune during training."""

    steps: int = Field(10, ge=1, le=100, description="Pruning events during distillation.")
    schedule: Literal["cubic", "linear"] = Field(
        "cubic",
        description="How the pruned fraction grows over the events (cubic: fast "
        "first, gently at the end, as in gradual pruning).",
    )
    start: float = Field(0.0, ge=0, lt=1, description="First event, as a fraction of the steps.")
    end: float = Field(0.7, gt=0, le=1, description="Last event, as a fraction of the steps.")
    importance: Literal["distill", "criterion"] = Field(
        "distill",
        description="distill: first-order (Taylor) importance from the gradients "
        "of the distillation objective; criterion: the prune block's criterion.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> SelfPruneConfig:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must not come before start ({self.start})")
        given = {"finetune_epochs", "finetune_lr"} & self.model_fields_set
        if given:
            raise ValueError(
                f"{', '.join(sorted(given))}: distillation itself trains between the pruning "
                "events; set epochs/lr of the distill stage instead"
            )
        return self


# ------------------------------------------------------------ self-distilled pruning


def schedule_fraction(progress: float, kind: str) -> float:
    """Share of the final pruning done after ``progress`` (0..1) of the events."""
    progress = min(1.0, max(0.0, progress))
    return 1.0 - (1.0 - progress) ** 3 if kind == "cubic" else progress


class TaylorScores:
    """Running first-order importance ``|w * dL/dw|`` per weight, averaged over steps.

    The gradients are those of the whole distillation objective, so what is pruned is what
    the objective needs least. Before any pruning a student equal to its teacher has zero KD
    gradient; batch-norm statistics in training mode, dropout and the task loss make it non-zero,
    and when it is still zero the pruner falls back to the prune block's criterion.
    "Zero" is relative: the same model run on differently composed batches differs by float
    rounding, which leaves gradients about 1e-9 of the weights (real ones are about 1e-3).
    """

    NOISE = 1e-6  # mean |dL/dw| (weighted by |w|) below this is rounding, not signal

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.weight_total = 0.0

    def reset(self) -> None:
        self.sums, self.count, self.weight_total = {}, 0, 0.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            value = (p.detach() * p.grad.detach()).abs().float()
            prev = self.sums.get(name)
            self.sums[name] = value if prev is None or prev.shape != value.shape else prev + value
            self.weight_total += float(p.detach().abs().sum())
        self.count += 1

    def informative(self) -> bool:
        """Whether the gradients carried signal (else the criterion ranks the units)."""
        total = sum(float(v.sum()) for v in self.sums.values())
        if self.count == 0 or not math.isfinite(total) or self.weight_total <= 0:
            return False
        return total / self.weight_total > self.NOISE

    def group_scores(self, group: Any) -> torch.Tensor:
        """One score per unit of an engine ``UnitGroup``: for each member, the summed scores
        of the weights each unit owns, scaled to mean 1, then averaged over the members (as
        the prune stage's own ``taylor`` criterion combines them)."""

        per_member = []
        for member in group.members:
            values = None
            for attr in channel_dims(member.module, member.role):
                acc = self.sums.get(f"{member.name}.{attr}" if member.name else attr)
                entries = member.entries(attr, tensor=acc) if acc is not None else None
                if entries is not None:
                    values = entries.sum(1) if values is None else values + entries.sum(1)
            if values is None:
                continue
            units = group.unit_of(member.root.to(values.device)).cpu()
            scores = torch.zeros(group.size, dtype=torch.float64)
            per_member.append(scores.index_add_(0, units, values.double().cpu()))
        scaled = [s / s.mean() for s in per_member if float(s.mean()) > 0]
        if not scaled:
            return torch.ones(group.size, dtype=torch.float64)
        return torch.stack(scaled).mean(0)


class SelfPruner:
    """Prunes the student during distillation, following the schedule (the ``on_step`` hook).

    Each event asks the prune engine for ``schedule_fraction`` of the block's amounts/target,
    counted from the widths and size the model had when the stage began, so the last event
    lands exactly where a one-shot prune stage with the same options would.
    """

    def __init__(
        self,
        cfg: SelfPruneConfig,
        model: nn.Module,
        ctx: Any,
        objective: DistillObjective,
        regularizer: AlignedRegularizer | None,
        recalibrate_norms: bool = True,
    ):

        self.cfg, self.model, self.ctx = cfg, model, ctx
        self.recalibrate_norms = recalibrate_norms
        self.objective, self.regularizer = objective, regularizer
        self.scores = TaylorScores()
        self.state = PruneState.for_model(model, ctx)
        self.done = 0  # events applied
        self.event_steps: list[int] | None = None
        self.events: list[dict[str, Any]] = []

    def _plan(self, total: int) -> list[int]:
        k = self.cfg.steps
        span = self.cfg.end - self.cfg.start
        return [
            max(1, round(total * (self.cfg.start + span * i / max(1, k - 1)))) for i in range(k)
        ]

    def on_step(self, step: int, total: int) -> bool:
        """Accumulate importance; prune when the schedule says. True when units went."""
        if self.event_steps is None:
            self.event_steps = self._plan(total)
        if self.cfg.importance == "distill":
            self.scores.update(self.model)
        if self.done < len(self.event_steps) and step >= self.event_steps[self.done]:
            return self._prune_event(step)
        return False

    def finish(self) -> None:
        """Apply the events training did not reach (it stopped early), so the target holds."""
        if self.event_steps is None:  # not one training step: prune to the target at once
            self.event_steps = [0]
        while self.done < len(self.event_steps):
            self._prune_event(None)

    def _prune_event(self, step: int | None) -> bool:

        self.done += 1
        progress = schedule_fraction(self.done / len(self.event_steps), self.cfg.schedule)
        use_scores = self.cfg.importance == "distill" and self.scores.informative()
        was_training = self.model.training
        entry = prune_step(
            self.model,
            self.cfg,
            self.ctx,
            self.state,
            progress=progress,
            seed=self.ctx.stage_seed(100 + self.done),
            importance=self.scores.group_scores if use_scores else None,
        )
        self.model.train(was_training)
        self.scores.reset()
        changed = bool(entry.get("removed"))
        refit: list[str] = []
        aligned = None
        if changed:
            if self.recalibrate_norms:
                recalibrate_batch_norms(self.model, self.objective.calibration)
            self.objective.attach(self.model)
            refit = self.objective.fit_projections(self.model)
            if self.regularizer is not None:
                aligned = self.regularizer.attach(self.model)
        start = self.state.start
        self.events.append(
            {
                "step": step,
                "progress": round(progress, 4),
                "importance": "distill-taylor" if use_scores else self.cfg.criterion,
                "params_ratio": round(entry["params"] / max(1, start["params"]), 4),
                "macs_ratio": round(entry["macs"] / max(1, start["macs"]), 4),
                "removed": entry.get("removed", {}),
                "projections_refit": refit,
                **({"aligned": aligned} if aligned is not None else {}),
            }
        )
        return changed

    def report(self) -> dict[str, Any]:
        return {
            "schedule": self.cfg.schedule,
            "events": self.events,
            "notes": list(self.state.notes),
        }


@torch.no_grad()
def recalibrate_batch_norms(model: nn.Module, batch: Any) -> int:
    """Re-estimate every batch norm's running statistics on ``batch``.

    Removing channels upstream shifts what each batch norm sees; the running averages would
    take many steps to follow (and evaluation uses them), so the pruned model would look far
    worse than it is right after an event. Returns the number of batch norms updated.
    """
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms or batch is None:
        return 0
    saved = [(m, m.momentum, m.training) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: exactly this batch's statistics
    model.train()
    try:
        call_model(model, batch.inputs)
    finally:
        for m, momentum, training in saved:
            m.momentum = momentum
            m.train(training)
        model.train(was_training)
    return len(norms)


# ------------------------------------------------------------------ the stage


def norms_eval(model: nn.Module) -> None:
    """Batch norms use (and keep) their running statistics; the rest stays in training."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
