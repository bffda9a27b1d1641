"""Run a plan: load -> stages -> export -> bench -> report -> gates.

The run directory (``<out>/.run``) keeps each finished stage's model and report, so that
``resume=True`` continues after a crash, a kill or Ctrl-C from the last finished stage with
the same results as an uninterrupted run (every stage is seeded from the plan's seed and its
index, and a finished stage's weights are stored exactly). Every file is written under a
temporary name and renamed, so a kill never leaves a partial file under a final name, and a
lock file stops two runs from writing one output directory.

A stage whose training hit a non-finite loss keeps its last good weights; the run still
exports and reports (so the damage can be inspected) and then fails with exit code 3."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from compressor.counting import model_facts
from compressor.data.bundle import DataBundle
from compressor.errors import (
    EXIT_GATE_FAILED,
    EXIT_OK,
    CheckpointError,
    CompressError,
    ExportError,
    StageError,
    TrainingError,
    disk_full_in,
)
from compressor.formats import export as export_mod
from compressor.formats.compacted import load_compressed, save_compressed
from compressor.formats.loading import load_model
from compressor.formats.manifest import diff, snapshot
from compressor.measure import bench as bench_mod
from compressor.measure import report as report_mod
from compressor.measure.artifact_metrics import evaluate_artifacts
from compressor.measure.gates import check_gates
from compressor.plan.checks import LoadedPlan
from compressor.run.context import RunContext
from compressor.run.environment import resolve_device, run_environment
from compressor.run.lock import OutputLock
from compressor.run.state import (
    RunState,
    diverged_stages,
    plan_fingerprint,
    remove_leftovers,
    remove_previous_artifacts,
)
from compressor.safe_import import allowed_imports as allow_imports_for_run
from compressor.stages.registry import get_stage
from compressor.training import distributed


@dataclass
class RunResult:
    """What a run produced. ``error`` is set when the run wrote its artifacts and report
    but must still fail (training diverged); its ``exit_code`` is then the run's."""

    out_dir: Path
    report: dict[str, Any]
    exit_code: int
    gate_failures: list[str] = field(default_factory=list)
    error: CompressError | None = None


def default_out_dir(loaded: LoadedPlan) -> Path:
    plan = loaded.plan
    if plan.export.dir:
        path = Path(plan.export.dir)
        return path if path.is_absolute() else loaded.base_dir / path
    name = plan.name or (
        loaded.path.parent.name if loaded.path.stem == "plan" else loaded.path.stem
    )
    return Path("out") / name


def run_plan(
    loaded_plan: LoadedPlan,
    *,
    out_dir: Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    extra_gates: dict[str, float] | None = None,
    skip_bench: bool = False,
    allowed_imports: list[str] | None = None,
) -> RunResult:
    """Run a validated plan end to end and write every artifact into ``out_dir``.

    Args:
        loaded_plan: from :func:`compressor.plan.load.load_plan`.
        out_dir: the output directory (default: ``export.dir`` or ``out/<plan name>``).
        resume: continue from the last stage an earlier run of the same plan finished.
        console: where progress goes.
        quiet: less output.
        extra_gates: gates added or overridden (``--gate``).
        skip_bench: skip latency measurement.
        allowed_imports: module prefixes safe mode may import (``--allow-import``).

    Returns:
        The report and the exit code (0 ok, 1 a gate failed, 3 training diverged).

    Raises:
        CompressError: bad input (exit 2) or a runtime failure (exit 3); KeyboardInterrupt
            passes through after the lock is released (finished stages are kept).
    """
    plan = loaded_plan.plan
    console = console or Console()
    out = Path(out_dir) if out_dir else default_out_dir(loaded_plan)

    with allow_imports_for_run(allowed_imports):
        dist = distributed.current()
        device = distributed.device_for(dist, resolve_device(plan.device))
        lock = OutputLock(out) if dist is None or dist.rank == 0 else None
        if lock is not None:
            lock.__enter__()
        try:
            if lock is not None:
                remove_leftovers(out)
            return _run(
                loaded_plan,
                out,
                device,
                resume,
                console,
                quiet,
                extra_gates or {},
                skip_bench,
                dist,
            )
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)


def _run(loaded_plan, out, device, resume, console, quiet, extra_gates, skip_bench, dist):

    plan = loaded_plan.plan
    started = time.perf_counter()
    torch.manual_seed(plan.seed)
    loaded = load_model(plan.model, loaded_plan.base_dir, safe=plan.safe)
    if plan.stages and not loaded.prunable:
        raise StageError(
            f"{loaded.path} is a {loaded.kind} file: it can be benchmarked but not compressed",
            hint="give the PyTorch checkpoint (state dict + architecture) instead",
        )
    data = DataBundle(plan, loaded_plan.base_dir, loaded.input_specs, loaded.tokenizer)
    ctx = RunContext(
        plan=plan,
        base_dir=loaded_plan.base_dir,
        loaded=loaded,
        device=device,
        data=data,
        console=console,
        quiet=quiet,
        distributed=dist,
    )
    # Refuse an impossible export now, not after an hour of training.
    export_mod.check_formats(ctx, plan.export.formats)
    model = loaded.model.to(device)

    def load_original() -> torch.nn.Module:
        # Loaded again (safetensors are memory-mapped) instead of copied now: a plan whose
        # stages need no teacher never holds two copies of the weights during its stages.
        return load_model(plan.model, loaded_plan.base_dir, safe=plan.safe).model

    ctx.original_loader = load_original
    ctx.run_dir = out / ".run"
    ctx.history = list(loaded.history)

    def current_example() -> dict[str, torch.Tensor] | None:
        # Asked again after every stage: vocabulary pruning changes the token ids the model
        # reads (the data is re-tokenised), so an example taken earlier would be out of range.
        if not (loaded.input_specs or data.has("eval")):
            return None
        return {k: v.to(device) for k, v in ctx.example_inputs().items()}

    example = current_example()

    names = [name for name, _ in plan.stage_list()]
    state = RunState(out / ".run", plan_fingerprint(plan, loaded_plan.base_dir))
    restore = 0
    if resume:
        restore = state.finished_prefix(names) if state.load() else 0
        if restore == 0:
            ctx.log(
                "[dim]nothing to resume: no finished stage of this plan in "
                f"{state.dir}; starting from the first stage[/]"
            )
    if names and ctx.is_main_process and loaded.architecture is not None and restore == 0:
        # A fresh start forgets the earlier run's stages, so a later --resume cannot mix them in
        # (and their files go too: a stale 01-distill beside this run's 00-distill misleads).

        shutil.rmtree(state.dir / "stages", ignore_errors=True)
        state.stages = []
        state.save()
    manifest = list(loaded.manifest)
    before = snapshot(model)

    original_facts = model_facts(model, example) if example is not None else {}
    also_before: dict[str, float] = {}
    metric_before = ctx.evaluate(model, also=also_before)  # no stage has run: the original
    if metric_before is not None:
        ctx.log(f"original {ctx.metric().name}: {metric_before:.4f}")

    if restore:
        # Only the last finished stage's model is needed: it is the next stage's input.
        last = restore - 1
        try:
            restored = load_compressed(
                state.stage_path(last, names[last]),
                safe=plan.safe,
                architecture=loaded.architecture,
            )
        except CheckpointError as e:
            raise CheckpointError(
                f"cannot resume from stage {last} ({names[last]}): {e.message}",
                hint=f"the run directory {state.dir} is damaged: run without --resume to "
                "start over",
            ) from None
        model = restored.model.to(device)
        manifest, ctx.history, before = restored.manifest, restored.history, snapshot(model)
        # A finished stage that pruned the vocabulary left a model that reads new token ids.

        ctx.adopt_tokenizer(model)
        example = current_example()
        for index in range(restore):
            ctx.stage_reports.append(state.done(index)["report"])
        ctx.log(f"[dim]resumed: stage(s) 0-{last} finished earlier, loaded from {state.dir}[/]")
    state.stages = [s for s in state.stages if s["index"] < restore]

    for index, (name, cfg) in enumerate(plan.stage_list()):
        if index < restore:
            continue
        ctx.stage_index, ctx.stage_name, ctx.stage_report = index, name, {}
        ctx.log(f"[bold cyan]stage {index}[/] {name}")
        stage = get_stage(name)
        t0 = time.perf_counter()
        torch.manual_seed(ctx.stage_seed())
        model = stage.apply(model, cfg, ctx)
        seconds = time.perf_counter() - t0
        example = current_example()
        stage_report = {
            "index": index,
            "name": name,
            "seconds": round(seconds, 2),
            "config": cfg.model_dump(mode="json"),
            **ctx.stage_report,
        }
        if example is not None:
            stage_report.update(model_facts(model, example))
        metric = ctx.evaluate(model)
        if metric is not None:
            stage_report["metric"] = metric
            ctx.log(f"  after {name}: {ctx.metric().name} {metric:.4f}")
        ctx.stage_reports.append(stage_report)
        if ctx.is_main_process and loaded.architecture is not None:
            stage_manifest = manifest + diff(before, model)
            save_compressed(
                model,
                state.stage_path(index, name),
                architecture=loaded.architecture,
                manifest=stage_manifest,
                inputs=_input_dump(loaded),
                history=ctx.history,
                codebooks=True,
            )
            manifest, before = stage_manifest, snapshot(model)
            state.stages.append(
                {"index": index, "name": name, "done": True, "report": stage_report}
            )
            state.save()

    manifest = manifest + diff(before, model)
    if dist is not None:
        distributed.barrier(dist)
        if not ctx.is_main_process:
            return RunResult(out, {}, EXIT_OK)
        # Rank 0 alone exports, measures and reports: no more collectives from here on.
        ctx.distributed = None
    model.eval()
    ctx.log(f"exporting {', '.join(plan.export.formats)} to {out}")
    remove_previous_artifacts(out)
    try:
        artifacts = export_mod.export_model(model, ctx, out, manifest)
    except ExportError as e:
        raise disk_full_in(e) from None  # an exporter that ran out of disk says so
    evaluate_artifacts(ctx, artifacts)
    measured = None
    if plan.bench.enabled and not skip_bench:
        measured = bench_mod.bench_run(ctx, ctx.original, model, artifacts, out)
    also_after: dict[str, float] = {}
    report = report_mod.build_report(
        ctx,
        original_facts=original_facts,
        compressed_facts=model_facts(model, example) if example is not None else {},
        metric_before=metric_before,
        metric_after=ctx.evaluate(model, also=also_after),
        artifacts=artifacts,
        bench=measured,
        seconds=time.perf_counter() - started,
    )
    report["run"] = run_environment(device, dist)
    if also_after and report.get("metric"):
        report["metric"]["also"] = {
            name: {"before": also_before.get(name), "after": value}
            for name, value in also_after.items()
        }
    failures = check_gates(report, plan.gates, extra_gates)
    report["gates"]["failed"] = failures
    if restore:
        report["resumed_stages"] = list(range(restore))
    diverged = diverged_stages(ctx.stage_reports)
    if diverged:
        report["diverged"] = diverged
        report["notes"] = [*report.get("notes", []), *(d["message"] for d in diverged)]
    report_mod.write_reports(report, out)
    if diverged:
        first = diverged[0]
        error = TrainingError(
            f"training diverged: {first['message']}. The run went on with them: the artifacts "
            f"in {out} are complete, and report.json lists every diverged stage under "
            "'diverged'",
            hint="lower the stage's lr, keep grad_clip on, use precision: fp32, or check the "
            "training data for NaN/Inf values",
        )
        return RunResult(out, report, error.exit_code, failures, error)
    return RunResult(out, report, EXIT_GATE_FAILED if failures else EXIT_OK, failures)


def _input_dump(loaded) -> dict[str, Any]:
    return {n: s.model_dump(mode="json") for n, s in loaded.input_specs.items()}
