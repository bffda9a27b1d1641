"""Run a plan: load -> stages -> export -> bench -> report -> gates.

The run directory (``<out>/.run``) keeps each finished stage's model and report, so that
``resume=True`` continues after a crash, a kill or Ctrl-C from the last finished stage with
the same results as an uninterrupted run (every stage is seeded from the plan's seed and its
index, and a finished stage's weights are stored exactly). Every file is written under a
temporary name and renamed, so a kill never leaves a partial file under a final name, and a
lock file stops two runs from writing one output directory.

A stage whose training hit a non-finite loss keeps its last good weights; the run still
exports and reports (so the damage can be inspected) and then fails with exit code 3.
"""

from __future__ import annotations

import errno
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

from compressor.architecture import allowed_imports as allow_imports_for_run
from compressor.artifacts import load_compressed, save_compressed, write_json_atomic
from compressor.checkpoint import load_model, resolve_path
from compressor.context import DataBundle, RunContext
from compressor.errors import (
    EXIT_GATE_FAILED,
    EXIT_OK,
    CheckpointError,
    CompressError,
    ExportError,
    PathError,
    RunLockedError,
    StageError,
    TrainingError,
    disk_full_in,
)
from compressor.modeling import count_macs, count_params
from compressor.plan_io import LoadedPlan
from compressor.stages.registry import get_stage
from compressor.structure import diff, snapshot

RUN_STATE_VERSION = 1


# What a run writes into the output directory; a new export first removes the previous
# run's copies, so the directory never holds a mix of two runs' files.
FINAL_ARTIFACTS = (
    "model.safetensors",
    "model.onnx",
    "model.onnx.data",
    "model.optimized.onnx",
    "model.optimized.onnx.data",
    "model.int8.onnx",
    "model.int8.onnx.data",
    "report.json",
    "report.md",
    "report.png",
)


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


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise StageError(
            "the plan asks for device: cuda but no CUDA GPU is available here",
            hint="use device: auto (GPU when present) or device: cpu",
        )
    return torch.device(requested)


# Plan fields that only shape the outputs (or the run's checks), never a stage's result.
_NOT_FINGERPRINTED = ("name", "safe", "export", "bench", "gates")


def _file_digest(path: Path) -> str:
    """Size plus a hash of the first and last MiB: notices a replaced checkpoint in
    milliseconds even for a huge file, and ignores mtime (a fresh git checkout changes it)."""
    chunk = 1 << 20
    digest = hashlib.sha256()
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            digest.update(f.read(chunk))
            if size > chunk:
                f.seek(max(chunk, size - chunk))
                digest.update(f.read(chunk))
    except OSError:
        return "unreadable"
    return f"{size}:{digest.hexdigest()[:16]}"


def plan_fingerprint(plan: Any, base_dir: Path | None = None) -> str:
    """What a resume must match: the plan and the checkpoint files it starts from.

    Fields that do not change what the stages compute are left out, so that, for example, a
    run whose ONNX verification failed resumes after ``export.onnx.atol`` is raised.
    """
    data = plan.model_dump(mode="json", exclude=set(_NOT_FINGERPRINTED))
    if base_dir is not None:
        files = {}
        for spec in (plan.model, plan.teacher):
            if not isinstance(spec, str) and spec.checkpoint is not None:
                path = resolve_path(spec.checkpoint, base_dir)
                if path.is_file():
                    files[spec.checkpoint] = _file_digest(path)
        data["__files__"] = files
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_LOCK_GRACE_SECONDS = 10.0


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: /proc), so a reused pid is not mistaken for
    the run that took the lock; None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counted after the ")" that ends the command name.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


class OutputLock:
    """An exclusive lock on the output directory: one run writes it at a time.

    Where the OS has ``flock`` (Linux, macOS) the lock is the kernel's, on the file
    ``<out>/.compress.lock``: it is released when its process ends in any way, SIGKILL
    included, so a killed run never blocks the next one and two runs starting together
    cannot both win. Elsewhere the file is created exclusively and holds the owner's pid and
    start time; a lock whose owner is gone is stale and taken over.
    """

    def __init__(self, out_dir: Path):
        self.path = out_dir / ".compress.lock"
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        prepare_out_dir(self.path.parent)
        try:
            import fcntl
        except ImportError:  # Windows
            return self._enter_by_exclusive_create()
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except PermissionError as e:
                raise _not_writable(self.path.parent, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_pid(fd)
                os.close(fd)
                raise self._locked(owner) from None
            # The previous holder unlinks the file as it finishes: if that happened after we
            # opened it, we hold a lock on a deleted file. Try again on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {_process_start(os.getpid()) or ''}\n".encode())
            self._fd = fd
            return self

    def _locked(self, owner: int | None) -> RunLockedError:
        return RunLockedError(
            f"another compress run{f' (pid {owner})' if owner else ''} is writing "
            f"{self.path.parent} (lock {self.path})",
            hint="wait for it to finish, or use another --out",
        )

    def _enter_by_exclusive_create(self) -> OutputLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._live_owner()
                if owner is None:
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._locked(owner) from None
            except PermissionError as e:
                raise _not_writable(self.path.parent, e) from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {_process_start(os.getpid()) or ''}\n")
            return self
        raise RunLockedError(
            f"could not take the lock {self.path}",
            hint="another run keeps taking it; use another --out",
        )

    def _live_owner(self) -> int | None:
        """The pid of the run holding an exclusive-create lock (0: unknown), or None when the
        lock is stale."""
        try:
            pid_text, _, started = self.path.read_text().strip().partition(" ")
            pid = int(pid_text or "0")
        except (OSError, ValueError):
            pid, started = 0, ""
        if pid <= 0:
            # Empty: a run created it a moment ago and is writing its pid (taking it over
            # now would let two runs in). Only an old unreadable lock is stale.
            try:
                young = time.time() - self.path.stat().st_mtime < _LOCK_GRACE_SECONDS
            except OSError:
                return None
            return 0 if young else None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid  # alive, owned by another user
        current = _process_start(pid)
        if started.strip() and current is not None and current != started.strip():
            return None  # the pid was reused by an unrelated process
        return pid

    def __exit__(self, *exc: Any) -> None:
        # Unlinked while still held, so a run waiting on the old file notices (see above).
        self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None


def _not_writable(out: Path, error: OSError) -> PathError:
    return PathError(
        f"cannot write the output directory {out}: {error.strerror or error}",
        hint="choose a writable --out (or fix the folder's permissions)",
    )


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` and check it is a writable folder, before any work is done.

    Raises:
        PathError: ``out`` is a file, or cannot be created or written (exit 2).
    """
    if out.exists() and not out.is_dir():
        raise PathError(
            f"the output directory {out} is a file",
            hint="give --out a folder (it is created if missing)",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a parent is a file
        raise PathError(
            f"cannot create the output directory {out}: a parent is a file",
            hint="give --out a folder path",
        ) from None
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
            raise _not_writable(out, e) from None
        raise
    if not os.access(out, os.W_OK | os.X_OK):
        raise _not_writable(out, PermissionError(errno.EACCES, "permission denied"))


def run_environment(device: torch.device, dist: Any) -> dict[str, Any]:
    """Where the stages ran: device (with GPU name and driver), versions, process count."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "world_size": dist.world_size if dist is not None else 1,
        "backend": dist.backend if dist is not None else None,
        "written_by_rank": 0,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["driver"] = _nvidia_driver()
    return info


def _nvidia_driver() -> str | None:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def model_facts(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"params": count_params(model), "macs": count_macs(model, inputs)}


class RunState:
    """The run directory: which stages are done, and where their models are.

    ``state.json`` lists each finished stage (index, name, report); the stage's model is
    ``stages/NN-name/model.safetensors``. Both are written atomically, model first, so a
    stage listed as done always has its complete model file.
    """

    def __init__(self, run_dir: Path, fingerprint: str):
        self.dir = run_dir
        self.file = run_dir / "state.json"
        self.fingerprint = fingerprint
        self.stages: list[dict[str, Any]] = []

    def load(self) -> bool:
        """Read the state of an earlier run; False when there is none (or it is unreadable).

        Raises:
            StageError: the earlier run used another plan or checkpoint (exit 2).
        """
        if not self.file.is_file():
            return False
        try:
            data = json.loads(self.file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        if not isinstance(data, dict):
            return False
        if data.get("fingerprint") != self.fingerprint:
            raise StageError(
                f"the plan or its checkpoint changed since the interrupted run in "
                f"{self.dir.parent}, so its finished stages do not apply",
                hint="run without --resume to start over (or restore the plan and checkpoint)",
            )
        stages = data.get("stages", [])
        self.stages = [s for s in stages if isinstance(s, dict) and isinstance(s.get("index"), int)]
        return True

    def save(self) -> None:
        write_json_atomic(
            self.file,
            {"version": RUN_STATE_VERSION, "fingerprint": self.fingerprint, "stages": self.stages},
        )

    def stage_path(self, index: int, name: str) -> Path:
        return self.dir / "stages" / f"{index:02d}-{name}" / "model.safetensors"

    def finished_prefix(self, names: list[str]) -> int:
        """How many stages, from the first, are done with their model file present."""
        count = 0
        for index, name in enumerate(names):
            done = self.done(index)
            if (
                done is None
                or done.get("name") != name
                or not self.stage_path(index, name).is_file()
            ):
                break
            count += 1
        return count

    def done(self, index: int) -> dict[str, Any] | None:
        return next((s for s in self.stages if s["index"] == index and s.get("done")), None)


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
        loaded_plan: from :func:`compressor.plan_io.load_plan`.
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
    from compressor import distributed

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
        import shutil

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
        from compressor.hf import adopt_model_tokenizer

        adopt_model_tokenizer(ctx, model)
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
        from compressor.distributed import barrier

        barrier(dist)
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
    failures = report_mod.check_gates(report, plan.gates, extra_gates)
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


def diverged_stages(stage_reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stages whose training stopped on a non-finite loss (``compressor.training`` records
    each under the stage report's ``diverged`` key), with a message naming stage and step."""
    found = []
    for report in stage_reports:
        index, name = report.get("index"), report.get("name")
        for event in report.get("diverged") or []:
            during = event.get("during")
            inside = f", {during}" if during and during != name else ""
            message = (
                f"stage {index} ({name}{inside}) stopped at training step {event.get('step')}: "
                f"the loss was {event.get('loss')}; its last good weights were kept"
            )
            found.append({"stage": index, "name": name, **event, "message": message})
    return found


def remove_leftovers(out: Path) -> list[Path]:
    """Delete what a killed run left behind: hidden ``.NAME.*.tmp`` files of atomic writes and
    ``.onnx-staging-*`` folders. Called with the lock held, so no live run owns them.

    Returns:
        The paths removed.
    """
    import shutil

    names = (*FINAL_ARTIFACTS, "state.json")
    folders = [out, out / ".run", *sorted((out / ".run" / "stages").glob("*"))]
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for name in names:
            for tmp in folder.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    for staging in out.glob(".onnx-staging-*"):
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def remove_previous_artifacts(out: Path) -> None:
    """Delete an earlier run's final files from ``out`` before this run writes its own, so
    the folder never holds one run's model beside another run's report."""
    import shutil

    for name in FINAL_ARTIFACTS:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "tokenizer", ignore_errors=True)  # a rewritten tokenizer (export.py)


def _input_dump(loaded) -> dict[str, Any]:
    return {n: s.model_dump(mode="json") for n, s in loaded.input_specs.items()}
