"""Run a plan: load -> stages -> export -> bench -> report -> gates.

The run directory (``<out>/.run``) keeps each finished stage's model and report, so that
``resume=True`` continues after a crash or Ctrl-C from the last finished stage with the same
results as an uninterrupted run (every stage is seeded from the plan's seed and its index).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console

from compressor.artifacts import load_compressed, save_compressed, write_json_atomic
from compressor.checkpoint import load_model
from compressor.context import DataBundle, RunContext
from compressor.errors import EXIT_GATE_FAILED, EXIT_OK, RunLockedError, StageError
from compressor.modeling import count_macs, count_params
from compressor.plan_io import LoadedPlan
from compressor.stages.registry import get_stage
from compressor.structure import diff, snapshot

RUN_STATE_VERSION = 1


@dataclass
class RunResult:
    out_dir: Path
    report: dict[str, Any]
    exit_code: int
    gate_failures: list[str] = field(default_factory=list)


def default_out_dir(loaded: LoadedPlan) -> Path:
    plan = loaded.plan
    if plan.export.dir:
        path = Path(plan.export.dir)
        return path if path.is_absolute() else loaded.base_dir / path
    name = plan.name or (loaded.path.parent.name if loaded.path.stem == "plan" else loaded.path.stem)
    return Path("out") / name


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise StageError("the plan asks for device: cuda but no CUDA GPU is available here",
                         hint="use device: auto (GPU when present) or device: cpu")
    return torch.device(requested)


def plan_fingerprint(plan: Any) -> str:
    # Output-only fields do not change the model, so they do not block a resume.
    data = plan.model_dump(mode="json", exclude={"bench": True, "gates": True})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class OutputLock:
    """An exclusive lock file in the output directory: one run writes it at a time."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / ".compress.lock"

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunLockedError(
                    f"another compress run is writing {self.path.parent} (lock {self.path})",
                    hint="wait for it, use another --out, or delete the lock if no run is alive",
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise RunLockedError(f"could not take the lock {self.path}")

    def _stale(self) -> bool:
        try:
            pid = int(self.path.read_text().strip() or "0")
        except (OSError, ValueError):
            return True
        if pid <= 0:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


def model_facts(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"params": count_params(model), "macs": count_macs(model, inputs)}


class RunState:
    """The run directory: which stages are done, and where their models are."""

    def __init__(self, run_dir: Path, fingerprint: str):
        self.dir = run_dir
        self.file = run_dir / "state.json"
        self.fingerprint = fingerprint
        self.stages: list[dict[str, Any]] = []

    def load(self) -> bool:
        if not self.file.is_file():
            return False
        try:
            data = json.loads(self.file.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if data.get("fingerprint") != self.fingerprint:
            raise StageError(
                f"the plan changed since the interrupted run in {self.dir.parent}",
                hint="run without --resume to start over (or restore the plan)",
            )
        self.stages = list(data.get("stages", []))
        return True

    def save(self) -> None:
        write_json_atomic(self.file, {"version": RUN_STATE_VERSION,
                                      "fingerprint": self.fingerprint, "stages": self.stages})

    def stage_path(self, index: int, name: str) -> Path:
        return self.dir / "stages" / f"{index:02d}-{name}" / "model.safetensors"


def run_plan(
    loaded_plan: LoadedPlan,
    *,
    out_dir: Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    extra_gates: dict[str, float] | None = None,
    skip_bench: bool = False,
) -> RunResult:
    """Run a validated plan end to end and write every artifact into ``out_dir``."""
    plan = loaded_plan.plan
    console = console or Console()
    out = Path(out_dir) if out_dir else default_out_dir(loaded_plan)
    from compressor import distributed

    dist = distributed.current()
    device = distributed.device_for(dist, resolve_device(plan.device))
    lock = OutputLock(out) if dist is None or dist.rank == 0 else None
    if lock is not None:
        lock.__enter__()
    try:
        return _run(loaded_plan, out, device, resume, console, quiet, extra_gates or {},
                    skip_bench, dist)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _run(loaded_plan, out, device, resume, console, quiet, extra_gates, skip_bench, dist):
    from compressor import bench as bench_mod
    from compressor import export as export_mod
    from compressor import report as report_mod

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
    ctx = RunContext(plan=plan, base_dir=loaded_plan.base_dir, loaded=loaded, device=device,
                     data=data, console=console, quiet=quiet, distributed=dist)
    # Refuse an impossible export now, not after an hour of training.
    export_mod.check_formats(ctx, plan.export.formats)
    model = loaded.model.to(device)
    ctx.original = ctx.frozen_copy(model)
    ctx.history = list(loaded.history)
    example = {k: v.to(device) for k, v in ctx.example_inputs().items()} if (
        loaded.input_specs or data.has("eval")) else None

    state = RunState(out / ".run", plan_fingerprint(plan))
    resumed = state.load() if resume else False
    if not resume:
        state.stages = []
    manifest = list(loaded.manifest)
    before = snapshot(model)

    original_facts = model_facts(model, example) if example is not None else {}
    metric_before = ctx.evaluate(ctx.original)
    if metric_before is not None:
        ctx.log(f"original {ctx.metric().name}: {metric_before:.4f}")

    for index, (name, cfg) in enumerate(plan.stage_list()):
        ctx.stage_index, ctx.stage_name, ctx.stage_report = index, name, {}
        done = next((s for s in state.stages if s["index"] == index and s.get("done")), None)
        if resumed and done is not None:
            restored = load_compressed(state.stage_path(index, name), safe=plan.safe,
                                       architecture=loaded.architecture)
            model = restored.model.to(device)
            manifest = restored.manifest
            ctx.history = restored.history
            before = snapshot(model)
            ctx.stage_reports.append(done["report"])
            ctx.log(f"[dim]stage {index} ({name}): resumed from the run directory[/]")
            continue
        ctx.log(f"[bold cyan]stage {index}[/] {name}")
        stage = get_stage(name)
        t0 = time.perf_counter()
        torch.manual_seed(ctx.stage_seed())
        model = stage.apply(model, cfg, ctx)
        seconds = time.perf_counter() - t0
        stage_report = {"index": index, "name": name, "seconds": round(seconds, 2),
                        "config": cfg.model_dump(mode="json"), **ctx.stage_report}
        if example is not None:
            stage_report.update(model_facts(model, example))
        metric = ctx.evaluate(model)
        if metric is not None:
            stage_report["metric"] = metric
            ctx.log(f"  after {name}: {ctx.metric().name} {metric:.4f}")
        ctx.stage_reports.append(stage_report)
        if ctx.is_main_process and loaded.architecture is not None:
            stage_manifest = manifest + diff(before, model)
            save_compressed(model, state.stage_path(index, name), architecture=loaded.architecture,
                            manifest=stage_manifest, inputs=_input_dump(loaded),
                            history=ctx.history, codebooks=True)
            manifest, before = stage_manifest, snapshot(model)
            state.stages = [s for s in state.stages if s["index"] != index]
            state.stages.append({"index": index, "name": name, "done": True,
                                 "report": stage_report})
            state.save()

    manifest = manifest + diff(before, model)
    if not ctx.is_main_process:
        return RunResult(out, {}, EXIT_OK)
    model.eval()
    artifacts = export_mod.export_model(model, ctx, out, manifest)
    measured = None
    if plan.bench.enabled and not skip_bench:
        measured = bench_mod.bench_run(ctx, ctx.original, model, artifacts, out)
    report = report_mod.build_report(
        ctx, original_facts=original_facts, compressed_facts=model_facts(model, example)
        if example is not None else {}, metric_before=metric_before,
        metric_after=ctx.evaluate(model), artifacts=artifacts, bench=measured,
        seconds=time.perf_counter() - started,
    )
    failures = report_mod.check_gates(report, plan.gates, extra_gates)
    report["gates"]["failed"] = failures
    report_mod.write_reports(report, out)
    return RunResult(out, report, EXIT_GATE_FAILED if failures else EXIT_OK, failures)


def _input_dump(loaded) -> dict[str, Any]:
    return {n: s.model_dump(mode="json") for n, s in loaded.input_specs.items()}
