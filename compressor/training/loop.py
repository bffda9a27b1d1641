"""One correct training loop shared by ``finetune`` and ``distill``.

AdamW (or SGD), cosine / linear / constant schedule with warm-up, gradient clipping, bf16/fp16
autocast where the device supports it, evaluation each epoch, the best weights kept, early
stopping, a rich progress bar (loss, metric, throughput), determinism under a seed, and a
guard that stops on a non-finite loss and restores the last good weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn.parallel import DistributedDataParallel

from compressor.data.batches import Batch
from compressor.errors import StageError
from compressor.patterns import resolve_modules
from compressor.spec.base import EXAMPLE_INPUTS, LABELS, TRAIN_DATA, StageConfig

# The module, not its functions: tests (and tools) replace them on the module.
from compressor.training import distributed

LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]


class TrainingOptions(StageConfig):
    """Options shared by every stage that trains."""

    epochs: float = Field(
        1.0, ge=0, description="Passes over the training data (may be fractional)."
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: float = Field(0.0, ge=0, lt=1, description="Fraction of steps for linear warm-up.")
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    batch_size: int | None = Field(None, ge=1, description="Default: data.batch_size.")
    keep_best: bool = Field(True, description="Restore the weights of the best evaluation.")
    early_stopping: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement."
    )
    min_metric: float | None = Field(
        None, description="Stop the stage if the metric falls below this (collapse guard)."
    )
    freeze: list[str] = Field(
        default_factory=list,
        description="Modules (names or 're:' patterns) whose weights stay fixed while the "
        "stage trains, e.g. [model.embeddings]: no gradients, no optimizer state.",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="Under torchrun: ddp replicates the model on every process; fsdp shards "
        "the weights, gradients and optimizer state being trained across the processes "
        "(torch's fully_shard), for models that do not fit one device while training.",
    )
    dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Rate of the model's dropout layers while the stage trains (the model's "
        "own rates are restored after); 0 turns dropout off, as faithful distillation wants.",
    )

    def requirements(self) -> set[str]:
        return {EXAMPLE_INPUTS, TRAIN_DATA, LABELS}


@dataclass
class TrainSummary:
    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0
    examples: int = 0
    final_loss: float | None = None
    best_metric: float | None = None
    final_metric: float | None = None
    evals: list[dict[str, float]] = field(default_factory=list)
    stopped: str | None = None  # why training stopped before the planned end
    # How the processes shared the work: single, ddp or fsdp (with the shard count).
    parallel: str = "single"

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "epochs": round(self.epochs, 3),
            "seconds": round(self.seconds, 2),
            "examples_per_second": round(self.examples / self.seconds, 1) if self.seconds else None,
            "final_loss": self.final_loss,
            "best_metric": self.best_metric,
            "final_metric": self.final_metric,
            "evals": self.evals,
            "stopped": self.stopped,
            "parallel": self.parallel,
        }


def lr_factor(step: int, total: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total <= warmup_steps:
        return 1.0
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(params: Iterable[nn.Parameter], opts: TrainingOptions) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if opts.optimizer == "sgd":
        return torch.optim.SGD(params, lr=opts.lr, momentum=0.9, weight_decay=opts.weight_decay)
    return torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        return contextlib.nullcontext()  # fp16 autocast is a GPU feature
    return torch.autocast(device_type=device.type, dtype=dtype)


def task_loss(
    output: torch.Tensor, target: torch.Tensor | None, *, causal: bool = False
) -> torch.Tensor:
    """Cross-entropy for class labels, mean squared error for real-valued targets.

    ``causal``: a causal LM's next-token loss: position t's logits against label t + 1 (the
    labels are the input ids, as in transformers); labels of -100 (padding) are skipped.
    """
    if target is None:
        raise StageError(
            "this stage needs labelled training data, and the batch has no labels",
            hint="use labelled data.train, or the distill stage (no labels needed)",
        )
    if causal:
        if output.dim() != 3 or target.shape != output.shape[:2]:
            raise StageError(
                f"a causal LM's loss needs (N, T) token labels for its (N, T, vocab) logits; "
                f"got labels {list(target.shape)} for logits {list(output.shape)}",
                hint="train on token blocks (builtin:python_docs, or a .txt file with "
                "?block=256): labels = input_ids",
            )
        return torch.nn.functional.cross_entropy(
            output[:, :-1].float().reshape(-1, output.shape[-1]),
            target[:, 1:].reshape(-1).long(),
            ignore_index=-100,
        )
    if not target.is_floating_point():
        return torch.nn.functional.cross_entropy(
            output.float().reshape(-1, output.shape[-1]), target.reshape(-1)
        )
    return torch.nn.functional.mse_loss(output.float(), target.float().reshape(output.shape))


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _same_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    current = model.state_dict()
    return set(current) == set(state) and all(current[k].shape == v.shape for k, v in state.items())


def _record_divergence(ctx: Any, description: str, step: int, loss: torch.Tensor) -> None:
    # On the stage's report, whichever stage trained (finetune, distill, prune's steps): the
    # runner finds it there, also after --resume, and fails the run with exit 3 once the last
    # good weights are exported.
    record = getattr(ctx, "stage_report", None)
    if isinstance(record, dict):
        entry = {"step": step, "loss": str(loss.item()), "during": description}
        record.setdefault("diverged", []).append(entry)


@contextlib.contextmanager
def training_setup(model: nn.Module, opts: TrainingOptions):
    """Freeze ``opts.freeze`` and set ``opts.dropout`` for the stage; undone afterwards, so
    the exported model keeps its own dropout rates and trainable flags."""

    modules = dict(model.named_modules())
    frozen = {
        id(p): p
        for pattern in opts.freeze
        for name in resolve_modules(model, pattern, "freeze")
        for p in modules[name].parameters()
        if p.requires_grad
    }
    rates = [(m, m.p) for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    try:
        for p in frozen.values():
            p.requires_grad_(False)
        if opts.dropout is not None:
            for m, _ in rates:
                m.p = opts.dropout
        yield
    finally:
        for p in frozen.values():
            p.requires_grad_(True)
        for m, rate in rates:
            m.p = rate


def train(
    model: nn.Module,
    opts: TrainingOptions,
    ctx: Any,
    loss_fn: LossFn,
    *,
    loader: Any = None,
    extra_params: Iterable[nn.Parameter] | Callable[[], Iterable[nn.Parameter]] = (),
    on_step: Callable[[int, int], bool] | None = None,
    on_wrap: Callable[[nn.Module], None] | None = None,
    description: str = "train",
) -> TrainSummary:
    """Train ``model`` in place.

    Args:
        model: the model being trained (its structure may change when ``on_step`` says so).
        opts: the stage's training options.
        ctx: the RunContext (data, device, evaluation, console, seeds).
        loss_fn: ``(model, batch) -> (loss, logs)``.
        loader: batches to train on (default: the plan's training data, shuffled).
        extra_params: trainable parameters outside the model (e.g. projection heads), or a
            function returning them, called whenever the optimizer is (re)built.
        on_step: called after each optimizer step with ``(step, total_steps)``; returns True
            when it changed the model's structure, so the optimizer is rebuilt.
        on_wrap: called with the module actually trained when it is not ``model`` (under
            ``parallel: fsdp``, a sharded copy), so forward hooks can be moved onto it.
        description: label of the progress bar.

    Returns:
        What happened, for the report.
    """
    with training_setup(model, opts):
        return _train(
            model, opts, ctx, loss_fn, loader, extra_params, on_step, on_wrap, description
        )


def _train(
    model, opts, ctx, loss_fn, loader, extra_params, on_step, on_wrap, description
) -> TrainSummary:
    seed = ctx.stage_seed()
    torch.manual_seed(seed)
    device = ctx.device
    model.to(device).train()
    extras = extra_params if callable(extra_params) else (lambda fixed=list(extra_params): fixed)
    if loader is None:
        loader = ctx.train_loader(batch_size=opts.batch_size, seed=seed)
    try:
        batches_per_epoch = len(loader)
    except TypeError:
        batches_per_epoch = 0
    if batches_per_epoch == 0 and opts.max_steps is None:
        raise StageError(
            "the training data is empty (or its length is unknown)",
            hint="check data.train, or set max_steps",
        )
    planned = math.ceil(opts.epochs * batches_per_epoch) if batches_per_epoch else 0
    total_steps = min(planned, opts.max_steps) if opts.max_steps else planned
    summary = TrainSummary()
    if total_steps == 0:
        return summary
    warmup_steps = int(opts.warmup * total_steps)

    fsdp = ctx.distributed is not None and opts.parallel == "fsdp"

    def wrap(m: nn.Module) -> nn.Module:
        if ctx.distributed is None:
            return m
        if fsdp:  # a sharded copy is trained; ``model`` gets its weights at each sync
            sharded = distributed.shard_copy(m, ctx.distributed, device)
            if on_wrap is not None:
                on_wrap(sharded)
            return sharded
        # Gradients are averaged across ranks by DDP; every rank keeps identical weights.
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(m, device_ids=ids)

    def build_optimizer() -> torch.optim.Optimizer:
        # Under fsdp the optimizer steps the shards (each rank its 1/N of the state).
        return make_optimizer([*(trained if fsdp else model).parameters(), *extras()], opts)

    restored = False  # the last good weights were put back: the shards must not overwrite them

    def sync() -> None:
        """Bring ``model`` up to date with what is being trained (fsdp: gather the shards)."""
        if fsdp and not restored:
            distributed.gather_into(trained, model)

    trained = wrap(model)
    optimizer = build_optimizer()
    if ctx.distributed is not None:
        summary.parallel = f"{opts.parallel} x{ctx.distributed.world_size}"
    scaler = (
        torch.amp.GradScaler(device.type)
        if (opts.precision == "fp16" and device.type == "cuda")
        else None
    )
    higher_better = ctx.metric().higher_is_better if ctx.metric() else True
    best_metric: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    last_good = _state_copy(model)
    evals_without_gain = 0
    step = 0
    start = time.perf_counter()
    running_loss = None
    metric_text = "-"

    show = ctx.is_main_process and not ctx.quiet
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("metric {task.fields[metric]}"),
        TextColumn("{task.fields[speed]} ex/s"),
        TimeElapsedColumn(),
        console=ctx.console,
        disable=not show,
        transient=False,
    )

    def evaluate_now(epoch_done: float) -> bool:
        """Evaluate, track the best; returns False when training should stop."""
        nonlocal best_metric, best_state, evals_without_gain, metric_text
        sync()
        if ctx.distributed is not None:
            distributed.sync_from_rank0(
                model, ctx.distributed
            )  # every rank evaluates rank 0's weights
        value = ctx.evaluate(model)
        model.train()
        if value is None:
            return True
        metric_text = f"{value:.4f}"
        summary.evals.append({"step": step, "epoch": round(epoch_done, 3), "metric": value})
        improved = best_metric is None or (
            value > best_metric if higher_better else value < best_metric
        )
        if improved:
            best_metric, evals_without_gain = value, 0
            if opts.keep_best:
                best_state = _state_copy(model)
        else:
            evals_without_gain += 1
        if opts.min_metric is not None and (
            value < opts.min_metric if higher_better else value > opts.min_metric
        ):
            summary.stopped = f"metric {value:.4f} crossed min_metric {opts.min_metric}"
            return False
        if opts.early_stopping is not None and evals_without_gain >= opts.early_stopping:
            summary.stopped = f"early stopping after {evals_without_gain} evaluations without gain"
            return False
        return True

    with progress:
        task = progress.add_task(description, total=total_steps, loss="-", metric="-", speed="-")
        epoch = 0
        keep_going = True
        while keep_going and step < total_steps:
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on all ranks
            for batch in loader:
                batch = batch.to(device)
                for group in optimizer.param_groups:
                    group["lr"] = opts.lr * lr_factor(
                        step, total_steps, warmup_steps, opts.schedule
                    )
                with autocast_context(device, opts.precision):
                    loss, _logs = loss_fn(trained, batch)
                if not torch.isfinite(loss):
                    if _same_shapes(model, last_good):
                        model.load_state_dict(last_good)
                        restored = True
                    summary.stopped = (
                        f"non-finite loss ({loss.item()}) at step {step}; restored the last good "
                        "weights (try a lower lr or grad_clip)"
                    )
                    ctx.log(f"[yellow]warning:[/] {description}: {summary.stopped}")
                    _record_divergence(ctx, description, step, loss)
                    keep_going = False
                    break
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if opts.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in optimizer.param_groups for p in g["params"]], opts.grad_clip
                    )
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                step += 1
                summary.examples += len(batch)
                value = float(loss.detach())
                running_loss = value if running_loss is None else 0.9 * running_loss + 0.1 * value
                if on_step is not None and on_step(step, total_steps):
                    trained = wrap(model)
                    optimizer = build_optimizer()
                    best_state, best_metric = None, None  # old shapes no longer apply
                    last_good = _state_copy(model)
                elapsed = time.perf_counter() - start
                progress.update(
                    task,
                    advance=1,
                    loss=f"{running_loss:.4f}",
                    metric=metric_text,
                    speed=f"{summary.examples / max(elapsed, 1e-9):.0f}",
                )
                if step >= total_steps:
                    break
            epoch += 1
            sync()
            last_good = _state_copy(model)
            if keep_going and not evaluate_now(step / max(1, batches_per_epoch)):
                keep_going = False
            progress.update(task, metric=metric_text)
    sync()
    if ctx.distributed is not None:
        distributed.sync_from_rank0(model, ctx.distributed)
    summary.steps = step
    summary.epochs = step / max(1, batches_per_epoch)
    summary.seconds = time.perf_counter() - start
    summary.final_loss = running_loss
    summary.final_metric = summary.evals[-1]["metric"] if summary.evals else None
    if opts.keep_best and best_state is not None and _same_shapes(model, best_state):
        model.load_state_dict(best_state)
        summary.final_metric = best_metric
    summary.best_metric = best_metric
    model.eval()
    return summary
