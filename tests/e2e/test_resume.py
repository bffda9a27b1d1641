"""Interrupted runs lose nothing: a ``compress run`` process killed (SIGKILL) in the middle of
each stage and of the export, or stopped with Ctrl-C / SIGTERM, leaves no partial file under
a final name, and ``--resume`` then produces files byte-identical to an uninterrupted run.

The kill points are deterministic without hooks in the code: the run prints ``stage N`` as a
stage starts, and the ONNX export works in a hidden ``.onnx-staging-*`` folder; each test
checks afterwards (the run directory's state) that the kill landed where it was aimed. The
process tests are marked slow; the in-process ones at the end (resume rules, atomic writes)
run with the fast suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from compressor.files.safetensors_header import read_header
from tests.e2e.runs import (
    ROOT,
    assert_fails_cleanly,
    compress_cmd,
    compress_process,
    invoke,
    mlp_plan,
)

# prune (two steps with fine-tuning between: long enough to be killed in) + finetune (30
# epochs, about a second: with 3 epochs an idle machine finished the finetune and the export
# before a signal sent on "stage 1 finetune" arrived, and the run exited 0), the default ONNX
# exporter (torch.export, a few seconds: long enough to be killed in too).
STAGES = (
    "  - prune: {amount: 0.5, criterion: l2, scope: per-layer, steps: 2, finetune_epochs: 1}\n"
    "  - finetune: {epochs: 30, lr: 2.0e-3}\n"
)
DATA = "  train: builtin:digits?split=train\n  eval: builtin:digits?split=test\n  batch_size: 32\n"
FINAL_NAMES = {
    "model.safetensors",
    "model.onnx",
    "model.onnx.data",
    "report.json",
    "report.md",
    "report.png",
    "state.json",
}
TIMING_KEYS = {"seconds", "created_utc", "examples_per_second"}


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plan")
    text = mlp_plan(STAGES, data=DATA).replace("export: {onnx: {exporter: legacy}}\n", "")
    path = folder / "plan.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def uninterrupted(plan, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    result = compress_process("run", plan, "--out", out, "--no-bench")
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _default_sigint() -> None:
    # A suite started in the background (`make test &`, nohup) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: the run would ignore the test's
    # Ctrl-C and exit 0. The child gets the default disposition, as in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(plan: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*compress_cmd(), "run", str(plan), "--out", str(out), "--no-bench", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_sigint,
    )


def interrupt_when(process: subprocess.Popen, out: Path, trigger: str, sig: int) -> str:
    """Send ``sig`` once ``trigger`` holds: ``line:TEXT`` (printed) or ``glob:PATTERN`` (a
    path under ``out`` exists). Returns what the process printed."""
    lines: list[str] = []
    seen = threading.Event()
    kind, _, what = trigger.partition(":")

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if kind == "line" and what in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not seen.is_set() and process.poll() is None and time.monotonic() < deadline:
        if kind == "glob" and any(out.glob(what)):
            break
        time.sleep(0.002)
    assert process.poll() is None, "the run ended before the trigger:\n" + "".join(lines)
    process.send_signal(sig)
    process.wait(timeout=120)
    reader.join(timeout=10)
    return "".join(lines) + process.stderr.read()


def finished_stages(out: Path) -> list[int]:
    state = out / ".run" / "state.json"
    return [s["index"] for s in json.loads(state.read_text())["stages"]] if state.exists() else []


def assert_no_partial_file(out: Path) -> None:
    """Every file under a final name is complete; anything else is a hidden temporary."""
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        relative = path.relative_to(out)
        if path.name in FINAL_NAMES and not any(
            p.startswith(".onnx-staging-") for p in relative.parts
        ):
            if path.suffix == ".safetensors":
                read_header(path)  # sizes, offsets and dtypes cover the file exactly
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".onnx":
                import onnx

                onnx.checker.check_model(onnx.load(str(path)))
        elif path.name != ".compress.lock":
            temporary = path.name.endswith(".tmp") and path.name.startswith(".")
            staged = any(p.startswith(".onnx-staging-") for p in relative.parts)
            assert temporary or staged, f"unexpected file after the kill: {relative}"


def without_timing(value, key=""):
    """report.json minus what differs between any two runs: timings, paths, creation time."""
    if isinstance(value, dict):
        return {
            k: without_timing(v, k)
            for k, v in value.items()
            if k not in TIMING_KEYS and k not in ("path", "resumed_stages")
        }
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def resume_and_compare(plan: Path, out: Path, reference: Path, resumed_upto: int | None):
    result = compress_process("run", plan, "--out", out, "--no-bench", "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    if resumed_upto is None:
        assert "nothing to resume" in result.stdout
    else:
        assert f"resumed: stage(s) 0-{resumed_upto} finished earlier" in result.stdout
    for name in ("model.safetensors", "model.onnx"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    report = json.loads((out / "report.json").read_text())
    expected = json.loads((reference / "report.json").read_text())
    assert without_timing(report) == without_timing(expected)
    if resumed_upto is not None:
        assert report["resumed_stages"] == list(range(resumed_upto + 1))
    # The resumed run cleaned up after the killed one: no temporaries, no lock.
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".run"]
    assert leftovers == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "where, trigger, done_before_kill",
    [
        ("stage 0 (prune)", "line:stage 0 prune", []),
        ("stage 1 (finetune)", "line:stage 1 finetune", [0]),
        ("the ONNX export", "glob:.onnx-staging-*", [0, 1]),
    ],
)
def test_sigkill_then_resume_gives_identical_files(
    plan, uninterrupted, tmp_path, where, trigger, done_before_kill
):
    out = tmp_path / "out"
    printed = interrupt_when(start(plan, out), out, trigger, signal.SIGKILL)
    assert finished_stages(out) == done_before_kill, f"the kill missed {where}:\n{printed}"
    assert (out / ".compress.lock").exists()  # a killed run cannot clean up: stale lock
    assert not (out / "report.json").exists()
    if where == "the ONNX export":
        assert not (out / "model.onnx").exists()  # only the staging folder had it
    assert_no_partial_file(out)
    resumed_upto = done_before_kill[-1] if done_before_kill else None
    resume_and_compare(plan, out, uninterrupted, resumed_upto)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, word, then_resume",
    [(signal.SIGINT, "interrupted", True), (signal.SIGTERM, "terminated", False)],
)
def test_ctrl_c_or_sigterm_exits_130_keeps_finished_stages(
    plan, uninterrupted, tmp_path, sig, word, then_resume
):
    out = tmp_path / "out"
    process = start(plan, out)
    printed = interrupt_when(process, out, "line:stage 1 finetune", sig)
    assert process.returncode == 130, printed
    assert f"{word}; finished stages are kept: rerun with --resume" in printed
    assert "Traceback" not in printed
    assert finished_stages(out) == [0]
    assert not (out / ".compress.lock").exists()  # released on the way out
    assert not list(out.rglob(".*.tmp"))  # temporaries removed on the way out
    if then_resume:  # (SIGTERM takes the same path out; one resume is enough)
        resume_and_compare(plan, out, uninterrupted, 0)


@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_refused_while_the_first_lives(plan, tmp_path):
    out = tmp_path / "out"
    slow = Path(str(plan).replace("plan.yaml", "slow.yaml"))
    slow.write_text(plan.read_text().replace("finetune: {epochs: 30", "finetune: {epochs: 600"))
    first = start(slow, out)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".compress.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        second = compress_process("run", slow, "--out", out, "--no-bench")
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"another compress run (pid {first.pid}) is writing {out}" in second.stderr
        assert first.poll() is None  # the second run did not disturb the first
    finally:
        first.kill()
        first.wait(timeout=60)
    # The killed run's lock is stale: the next run takes it over without manual cleanup (it
    # gets as far as comparing plans, which it does only once it holds the lock).
    third = compress_process(
        "run",
        slow,
        "--out",
        out,
        "--no-bench",
        "--resume",
        "--set",
        "stages.1.finetune.max_steps=2",
    )
    assert third.returncode == 2 and "changed since the interrupted run" in third.stderr


# ------------------------------------------------------------------ in-process: resume rules


def quick_plan(tmp_path: Path, stages: str = "  - finetune: {max_steps: 2}\n") -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(mlp_plan(stages))
    return path


def test_resume_after_changing_only_export_options_reuses_the_stages(tmp_path):
    plan, out = quick_plan(tmp_path), tmp_path / "out"
    assert invoke("run", plan, "--out", out, "--no-bench").exit_code == 0
    # e.g. the ONNX check failed and its tolerance was raised: the stages need not rerun.
    again = invoke(
        "run",
        plan,
        "--out",
        out,
        "--no-bench",
        "--resume",
        "--set",
        "export.onnx.atol=0.001",
        "--set",
        "name=renamed",
    )
    assert again.exit_code == 0, again.output
    assert "resumed: stage(s) 0-0" in again.output and "stage 0 finetune" not in again.output


def test_resume_without_a_run_directory_starts_from_the_first_stage(tmp_path):
    plan, out = quick_plan(tmp_path), tmp_path / "out"
    result = invoke("run", plan, "--out", out, "--no-bench", "--resume")
    assert result.exit_code == 0, result.output
    assert "nothing to resume" in result.output and "stage 0 finetune" in result.output


def test_resume_from_a_damaged_stage_file_says_to_start_over(tmp_path):
    plan, out = quick_plan(tmp_path), tmp_path / "out"
    assert invoke("run", plan, "--out", out, "--no-bench").exit_code == 0
    stage_file = out / ".run" / "stages" / "00-finetune" / "model.safetensors"
    stage_file.write_bytes(stage_file.read_bytes()[:-100])  # damaged behind our back
    result = invoke("run", plan, "--out", out, "--no-bench", "--resume")
    assert_fails_cleanly(
        result,
        2,
        "cannot resume from stage 0 (finetune)",
        "truncated",
        "run without --resume to start over",
    )


def test_a_fresh_run_forgets_the_stages_of_an_earlier_run(tmp_path, monkeypatch):
    from compressor.stages import registry

    plan, out = quick_plan(tmp_path), tmp_path / "out"
    assert invoke("run", plan, "--out", out, "--no-bench").exit_code == 0
    real = registry.get_stage("finetune")

    def interrupted(model, cfg, ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(
        registry._REGISTRY,
        "finetune",
        registry.StageDef("finetune", real.config, interrupted, real.summary),
    )
    assert invoke("run", plan, "--out", out, "--no-bench").exit_code == 130
    assert finished_stages(out) == []  # not the earlier run's stage 0
    monkeypatch.undo()
    again = invoke("run", plan, "--out", out, "--no-bench", "--resume")
    assert "nothing to resume" in again.output


def test_a_run_removes_what_a_killed_run_left_and_nothing_else(tmp_path):
    plan, out = quick_plan(tmp_path), tmp_path / "out"
    (out / ".onnx-staging-abc123").mkdir(parents=True)
    (out / ".onnx-staging-abc123" / "model.onnx").write_bytes(b"half")
    (out / ".model.safetensors.k2j3.tmp").write_bytes(b"half")
    (out / ".run" / "stages" / "00-finetune").mkdir(parents=True)
    (out / ".run" / "stages" / "00-finetune" / ".model.safetensors.x9.tmp").write_bytes(b"half")
    (out / "notes.txt").write_text("mine")
    (out / ".compress.lock").write_text("999999999 0\n")  # a dead run's lock
    assert invoke("run", plan, "--out", out, "--no-bench").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".run",
        "model.onnx",
        "model.safetensors",
        "notes.txt",
        "report.json",
        "report.md",
        "report.png",
    ]
    assert not list((out / ".run").rglob("*.tmp"))


def test_an_export_that_fails_leaves_no_earlier_artifacts_beside_it(tmp_path, monkeypatch):
    plan, out = quick_plan(tmp_path), tmp_path / "out"
    assert invoke("run", plan, "--out", out, "--no-bench").exit_code == 0
    import compressor.formats.export
    from compressor.errors import ExportError

    def broken(*args, **kwargs):
        raise ExportError("ONNX export of model.onnx failed: simulated")

    monkeypatch.setattr(compressor.formats.export, "export_model", broken)
    assert_fails_cleanly(invoke("run", plan, "--out", out, "--no-bench"), 3, "simulated")
    # No report of the earlier run describing a model this run did not write.
    assert not [p.name for p in out.iterdir() if p.name.startswith(("model.", "report."))]


# ------------------------------------------------------------------ atomic writes


def test_a_writer_killed_mid_write_leaves_only_a_hidden_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    code = (
        "import os, sys\n"
        "from compressor.files.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half a model')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(target)], cwd=ROOT)
    assert result.returncode == -signal.SIGKILL
    assert not target.exists()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".model.safetensors.") and left[0].endswith(".tmp")


def test_published_files_get_the_usual_permissions(tmp_path):
    from compressor.files.atomic import write_text_atomic

    previous = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_the_same_model_gives_the_same_bytes_in_every_process(tmp_path):
    # safetensors keeps metadata in a hash map with a per-process random order; compress
    # sorts it, or no two runs (and no resumed run) could produce identical files.
    code = (
        "import sys, torch\n"
        "from compressor.formats.architecture import ArchitectureRef\n"
        "from compressor.formats.compacted import save_compressed\n"
        "torch.manual_seed(0)\n"
        "save_compressed(torch.nn.Linear(3, 2), sys.argv[1],\n"
        "                architecture=ArchitectureRef('factory', 'a.b:c'), manifest=[])\n"
    )
    for name in ("a.safetensors", "b.safetensors", "c.safetensors"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], cwd=ROOT, check=True)
    raw = {(tmp_path / n).read_bytes() for n in ("a.safetensors", "b.safetensors", "c.safetensors")}
    assert len(raw) == 1


# ------------------------------------------------------------------ the lock


def test_lock_is_released_by_the_kernel_when_its_holder_dies(tmp_path):
    from compressor.errors import RunLockedError
    from compressor.run.lock import OutputLock

    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from compressor.run.lock import OutputLock\n"
        "OutputLock(Path(sys.argv[1])).__enter__()\n"
        "os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT)
    assert (tmp_path / ".compress.lock").exists()  # left behind, but no longer held
    held = rf"another compress run \(pid {os.getpid()}\)"
    with OutputLock(tmp_path), pytest.raises(RunLockedError, match=held):
        OutputLock(tmp_path).__enter__()
    assert not (tmp_path / ".compress.lock").exists()


def test_exclusive_create_lock_where_flock_is_missing(tmp_path):
    from compressor.errors import RunLockedError
    from compressor.run.lock import OutputLock

    first = OutputLock(tmp_path)._enter_by_exclusive_create()
    with pytest.raises(RunLockedError, match=rf"\(pid {os.getpid()}\)"):
        OutputLock(tmp_path)._enter_by_exclusive_create()
    first.__exit__()
    lock = tmp_path / ".compress.lock"
    lock.write_text("999999999 1\n")  # a dead run's: stale, taken over
    OutputLock(tmp_path)._enter_by_exclusive_create().__exit__()
    lock.write_text("")  # a run that is writing its pid right now: not stale
    with pytest.raises(RunLockedError, match="another compress run is writing"):
        OutputLock(tmp_path)._enter_by_exclusive_create()
    old = time.time() - 60
    os.utime(lock, (old, old))  # ...unless it stayed empty: then it is
    OutputLock(tmp_path)._enter_by_exclusive_create().__exit__()
