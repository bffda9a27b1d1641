"""The RunContext that travels through the stages: model source, teacher, data, device,
progress display and the report being built."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console
from torch.utils.data.distributed import DistributedSampler

from compressor.data.bundle import DataBundle
from compressor.data.tokenization import sequence_length
from compressor.errors import DataError, StageError
from compressor.formats.hf.model import DEFAULT_SEQ_LEN, HFModel, input_embedding
from compressor.formats.hf.tokenizer import model_tokenizer
from compressor.formats.loading import example_inputs, load_model
from compressor.formats.registry import LoadedModel
from compressor.forward import call_model, primary_output
from compressor.measure.metrics import MetricDef, compute_metric, get_metric
from compressor.plan.load import load_plan

# The module, not its functions: tests (and tools) replace them on the module.
from compressor.training import distributed


@dataclass
class RunContext:
    """Everything a stage may use besides the model it transforms."""

    plan: Any
    base_dir: Path
    loaded: LoadedModel
    device: torch.device
    data: DataBundle
    console: Console = field(default_factory=Console)
    quiet: bool = False
    # The model before any stage (frozen, eval mode). Memory-lean: not copied up front but
    # loaded again from the checkpoint the first time a teacher, a fidelity metric, aligned
    # regularisation or the benchmark needs it (see ``original``).
    original_loader: Callable[[], nn.Module] | None = None
    _original: nn.Module | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # structural edits
    stage_reports: list[dict[str, Any]] = field(default_factory=list)
    stage_report: dict[str, Any] = field(default_factory=dict)  # the current stage's details
    notes: list[str] = field(default_factory=list)
    stage_index: int = 0
    run_dir: Path | None = None  # <out>/.run: stage checkpoints, teacher caches
    stage_name: str = ""
    distributed: Any = None  # compressor.training.distributed.DistState when under torchrun
    _teacher: nn.Module | None = None
    _teacher_loaded: bool = False
    _teacher_eval: dict[str, list[torch.Tensor]] | None = None

    # ------------------------------------------------------------ the original

    @property
    def original(self) -> nn.Module | None:
        """The model as loaded, before any stage: frozen, in eval mode, on the run's device."""
        if self._original is None and self.original_loader is not None:
            self._original = self.original_loader().to(self.device).eval().requires_grad_(False)
        return self._original

    @original.setter
    def original(self, model: nn.Module | None) -> None:
        self._original = model

    # ------------------------------------------------------------ model facts

    @property
    def input_specs(self) -> dict[str, Any]:
        return self.loaded.input_specs

    def example_inputs(self, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """Real inputs when the plan has data, else deterministic synthetic ones."""
        if self.data.has("eval") or self.data.has("calibration"):
            split = "eval" if self.data.has("eval") else "calibration"
            size = batch_size or self.input_specs_batch()
            try:
                return self.data.first_batch(split, size).inputs
            except DataError:
                pass
        if not self.input_specs:
            raise StageError("the model has no example inputs", hint="give model.inputs")
        return example_inputs(self.input_specs, batch_size=batch_size)

    def input_specs_batch(self) -> int:
        for spec in self.input_specs.values():
            return spec.shape[0]
        return 1

    # ------------------------------------------------------------ tokenizer

    def adopt_tokenizer(self, model: nn.Module) -> bool:
        """Make the run tokenise text with ``model``'s rewritten tokenizer from now on.

        Called after vocabulary pruning (and, by the runner, after resuming from a stage that
        pruned the vocabulary): text data is re-tokenised with the new ids, and the input specs
        say the new vocabulary size, so evaluation, ONNX verification and the benchmark feed the
        compacted model ids it has. The teacher's evaluation outputs were computed on the
        original tokenisation before any stage ran, so fidelity compares the compacted model on
        its own tokens against the original on its own tokens. Returns False when ``model`` has
        no rewritten tokenizer.
        """
        if not isinstance(model, HFModel) or not model.tokenizer_json:
            return False
        specs = self.loaded.input_specs
        tokenize = model_tokenizer(model, sequence_length(specs, DEFAULT_SEQ_LEN))
        data = self.data
        data.set_tokenizer(tokenize)
        self.loaded.tokenizer = tokenize
        vocab = input_embedding(model).num_embeddings
        if "input_ids" in specs:
            specs["input_ids"] = specs["input_ids"].model_copy(update={"high": vocab})
        return True

    # ------------------------------------------------------------ seeds

    def stage_seed(self, offset: int = 0) -> int:
        """A seed per stage, so a resumed run repeats the same random choices."""
        return int(self.plan.seed) * 1000 + self.stage_index * 17 + offset

    # ------------------------------------------------------------ teacher

    def teacher(self) -> nn.Module | None:
        """The frozen teacher: the original model (default), a checkpoint, or None."""
        if not self._teacher_loaded:
            spec = self.plan.teacher
            if spec == "none":
                self._teacher = None
            elif spec == "original":
                self._teacher = self.original
            else:
                loaded = load_model(spec, self.base_dir, safe=self.plan.safe)
                if loaded.model is None:
                    raise StageError("the teacher must be a PyTorch model, not an ONNX file")
                self._teacher = loaded.model
            if self._teacher is not None:
                self._teacher.eval().requires_grad_(False).to(self.device)
            self._teacher_loaded = True
        return self._teacher

    # ------------------------------------------------------------ metric

    def metric(self) -> MetricDef | None:
        if not self.data.has("eval"):
            return None
        if self.plan.data.metric:
            return get_metric(self.plan.data.metric)
        return get_metric("accuracy" if self.data.has_labels("eval") else "cosine")

    def train_loader(
        self,
        *,
        batch_size: int | None = None,
        few_shot: int | None = None,
        seed: int | None = None,
        split: str = "train",
    ):
        """Shuffled training batches; under torchrun each rank gets its own shard."""
        seed = self.stage_seed() if seed is None else seed
        sampler_fn = None
        if self.distributed is not None:
            state = self.distributed

            def sampler_fn(ds):
                return DistributedSampler(
                    ds, num_replicas=state.world_size, rank=state.rank, shuffle=True, seed=seed
                )

        return self.data.loader(
            split,
            batch_size=batch_size,
            shuffle=True,
            seed=seed,
            few_shot=few_shot,
            sampler_fn=sampler_fn,
        )

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value on every rank (decisions such as which units to prune)."""

        return distributed.broadcast_object(obj, self.distributed)

    def _eval_batches(self):
        loader = self.data.loader("eval")
        if self.distributed is None:
            yield from loader
            return
        # Each rank evaluates every world_size-th batch; results are gathered below.
        for i, batch in enumerate(loader):
            if i % self.distributed.world_size == self.distributed.rank:
                yield batch

    def _gather(self, tensors: list) -> list:
        if self.distributed is None:
            return tensors

        return [
            t for part in distributed.all_gather_objects(tensors, self.distributed) for t in part
        ]

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        *,
        max_batches: int | None = None,
        also: dict[str, float] | None = None,
    ) -> float | None:
        """The plan's metric of ``model`` on the eval data (None without eval data).

        Under torchrun the batches are split across ranks and the outputs gathered, so
        every rank computes the same value over the whole set. ``also``, when given, is
        filled with ``data.also_metrics`` computed from the same outputs.
        """
        metric = self.metric()
        if metric is None:
            return None
        extra = (
            [get_metric(name) for name in self.plan.data.also_metrics] if also is not None else []
        )
        metrics = [metric, *extra]
        needs_teacher = any(m.needs_teacher for m in metrics)
        was_training = model.training
        model.eval()
        # Each metric keeps only its compact form of every batch (see MetricDef.keep), so a
        # language model's (N, T, vocab) logits are never held for the whole set.
        outputs: dict[str, list[torch.Tensor]] = {m.name: [] for m in metrics}
        targets, inputs_seen = [], []
        for i, batch in enumerate(self._eval_batches()):
            if max_batches is not None and i >= max_batches:
                break
            batch = batch.to(self.device)
            out = primary_output(call_model(model, batch.inputs))
            target = batch.target.cpu() if batch.target is not None else None
            for m in metrics:
                outputs[m.name].append(m.keep(out, target))
            targets.append(target)
            if needs_teacher:
                inputs_seen.append(batch)
        teacher_outputs: dict[str, list[torch.Tensor]] | None = None
        if needs_teacher:
            teacher = self.teacher()
            if teacher is None:
                raise StageError(
                    f"metric {metric.name!r} needs a teacher", hint="set teacher: original"
                )
            cached = self._teacher_eval or {}
            if max_batches is not None or any(m.name not in cached for m in metrics):
                fresh: dict[str, list[torch.Tensor]] = {m.name: [] for m in metrics}
                for b in inputs_seen:
                    t_out = primary_output(call_model(teacher, b.inputs))
                    t_target = b.target.cpu() if b.target is not None else None
                    for m in metrics:
                        fresh[m.name].append(m.keep(t_out, t_target))
                if max_batches is None:
                    self._teacher_eval = fresh
                cached = fresh
            teacher_outputs = cached
        model.train(was_training)
        targets = self._gather(targets)
        values = {}
        for m in metrics:
            kept = self._gather(outputs[m.name])
            teacher_kept = None
            if teacher_outputs is not None and m.needs_teacher:
                teacher_kept = teacher_outputs[m.name]
                if self.distributed is not None:
                    teacher_kept = self._gather(teacher_kept)
            values[m.name] = compute_metric(m, kept, targets, teacher_kept, kept=True)
        for other in extra:
            also[other.name] = values[other.name]
        return values[metric.name]

    # ------------------------------------------------------------ output

    def log(self, message: str) -> None:
        if not self.quiet and self.is_main_process:
            self.console.print(message)

    @property
    def is_main_process(self) -> bool:
        return self.distributed is None or self.distributed.rank == 0

    def frozen_copy(self, model: nn.Module) -> nn.Module:
        clone = copy.deepcopy(model)
        return clone.eval().requires_grad_(False)


def context_for_plan(
    plan_path: Path | str,
    overrides: list[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    quiet: bool = True,
    console: Console | None = None,
) -> tuple[RunContext, nn.Module]:
    """The context and model ``compress run`` would start from, for running stages from
    Python (notebooks, benchmarks, tests) without the runner's export and reporting.

    ``overrides`` are ``--set`` style ``path=value`` strings. The teacher (the original
    model) is loaded again on first use, as in a run.
    """

    loaded_plan = load_plan(Path(plan_path), list(overrides or []))
    plan = loaded_plan.plan
    loaded = load_model(plan.model, loaded_plan.base_dir, safe=plan.safe)
    ctx = RunContext(
        plan=plan,
        base_dir=loaded_plan.base_dir,
        loaded=loaded,
        device=torch.device(device),
        data=DataBundle(plan, loaded_plan.base_dir, loaded.input_specs, loaded.tokenizer),
        console=console or Console(stderr=True),
        quiet=quiet,
    )
    ctx.original_loader = lambda: load_model(plan.model, loaded_plan.base_dir, safe=plan.safe).model
    ctx.history = list(loaded.history)
    torch.manual_seed(plan.seed)
    return ctx, loaded.model.to(ctx.device)
