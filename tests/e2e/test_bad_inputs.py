"""Every failure a user can cause, through the CLI: the documented exit code, a message that
names the problem (file, field, value) and its fix, and never a traceback.

Each case below is one distinct bad input (a plan, a checkpoint, a data file or a flag).
``test_bad_input`` runs them in-process through the real Typer app; a few also run as a
real ``compress`` process at the end of the file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.e2e.runs import (
    MLP_ARCH,
    MLP_CHECKPOINT,
    SAMPLES,
    assert_fails_cleanly,
    compress_process,
    invoke,
    mlp_plan,
)

CNN_CHECKPOINT = SAMPLES / "digits_cnn" / "model.safetensors"
FINETUNE = "  - finetune: {epochs: 1, max_steps: 2}\n"

Builder = Callable[[Path, pytest.MonkeyPatch], tuple[list, list[str]]]
CASES: dict[str, tuple[Builder, int]] = {}


def case(name: str, code: int = 2):
    """Register a bad input: the builder writes files under ``tmp`` (and may monkeypatch
    with ``mp`` to simulate what a test cannot cause for real), then returns the CLI
    arguments and the strings the message must contain."""

    def register(builder: Builder) -> Builder:
        assert name not in CASES, name
        CASES[name] = (builder, code)
        return builder

    return register


def write(tmp: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def run_args(plan: Path, tmp: Path, *extra: object) -> list:
    return ["run", plan, "--out", tmp / "out", "--no-bench", *extra]


def safetensors_with_header(tmp: Path, header: dict, data: bytes, name: str) -> Path:
    raw = json.dumps(header).encode()
    path = tmp / name
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def mlp_with_checkpoint(tmp: Path, checkpoint: Path, stages: str = "") -> Path:
    text = mlp_plan(stages).replace(str(MLP_CHECKPOINT), str(checkpoint))
    return write(tmp, text)


def data_plan(tmp: Path, train: str) -> Path:
    data = f"  train: {train}\n  eval: builtin:digits?split=test\n"
    return write(tmp, mlp_plan(FINETUNE, data=data))


# ------------------------------------------------------------------ plans


@case("plan file missing")
def _(tmp, mp):
    return ["validate", tmp / "nothere.yaml"], ["nothere.yaml does not exist", "compress init"]


@case("plan is a folder")
def _(tmp, mp):
    return ["validate", tmp], ["is a folder", "give the plan's .yaml file"]


@case("plan is not UTF-8")
def _(tmp, mp):
    path = tmp / "plan.yaml"
    path.write_bytes(b"\xff\xfe\x00model")
    return ["validate", path], ["plan.yaml: not UTF-8 text", "save the plan as UTF-8"]


@case("plan has a YAML syntax error")
def _(tmp, mp):
    path = write(tmp, "version: 1\nmodel: [unclosed\n")
    return ["validate", path], ["plan.yaml:3:1", "YAML syntax error", "check indentation"]


@case("plan is empty")
def _(tmp, mp):
    return ["validate", write(tmp, "# nothing\n")], ["plan.yaml is empty", "model: section"]


@case("plan is a list, not a mapping")
def _(tmp, mp):
    return ["validate", write(tmp, "- model\n- stages\n")], ["must be a mapping", "not a list"]


@case("plan is an alias bomb")
def _(tmp, mp):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    path = write(tmp, "\n".join(lines) + "\n")
    return ["validate", path], ["plan.yaml", "more than 100,000 YAML nodes", "aliases"]


@case("plan is larger than 1 MiB")
def _(tmp, mp):
    path = write(tmp, "name: " + "a" * (1024 * 1024 + 10) + "\n")
    return ["validate", path], ["larger than 1 MiB"]


@case("plan carries a python object tag")
def _(tmp, mp):
    marker = tmp / "pwned"
    path = write(tmp, f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    return ["validate", path], ["plan.yaml:1:8", "'!!python/object/apply:os.system'", "not allowed"]


@case("plan repeats a key")
def _(tmp, mp):
    path = write(tmp, mlp_plan() + "seed: 1\nseed: 2\n")
    return ["validate", path], ["seed: key 'seed' appears twice"]


@case("plan misspells a stage option")
def _(tmp, mp):
    path = write(tmp, mlp_plan("  - finetune: {ephocs: 1}\n"))
    return ["validate", path], ["stages.0.finetune.ephocs: unknown key", "did you mean 'epochs'?"]


@case("plan gives a word where a number belongs")
def _(tmp, mp):
    path = write(tmp, mlp_plan("  - finetune: {lr: fast}\n"))
    return ["validate", path], ["stages.0.finetune.lr", "valid number", "'fast'"]


@case("plan names a stage that does not exist")
def _(tmp, mp):
    path = write(tmp, mlp_plan("  - quantise: {bits: 4}\n"))
    return ["validate", path], ["stages.0", "one of: finetune, prune", "quantise"]


@case("plan has no model section")
def _(tmp, mp):
    return ["validate", write(tmp, "version: 1\nstages: []\n")], [
        "model: required field is missing"
    ]


@case("plan sets a learning rate to NaN")
def _(tmp, mp):
    path = write(tmp, mlp_plan("  - finetune: {lr: .nan}\n"))
    return ["validate", path], ["stages.0.finetune.lr", "must be a finite number (got nan)"]


@case("plan asks for an unknown plan version")
def _(tmp, mp):
    path = write(tmp, mlp_plan().replace("version: 1", "version: 2"))
    return ["validate", path], ["plan.yaml:1:1: version: Input should be 1 (got 2)"]


@case("plan names a checkpoint that does not exist")
def _(tmp, mp):
    path = mlp_with_checkpoint(tmp, tmp / "gone.safetensors")
    return ["validate", path], ["model.checkpoint", "gone.safetensors does not exist"]


@case("plan's stage needs training data the plan lacks")
def _(tmp, mp):
    path = write(tmp, mlp_plan(FINETUNE, data="  eval: builtin:digits?split=test\n"))
    return ["validate", path], ["stages.0.finetune", "needs training data: set data.train"]


@case("plan's architecture is not an import string")
def _(tmp, mp):
    path = write(tmp, mlp_plan().replace(MLP_ARCH, "digits mlp"))
    return ["validate", path], ["model.architecture", "'package.module:function'"]


@case("plan asks for a CUDA device on a machine without one")
def _(tmp, mp):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    path = write(tmp, mlp_plan(top="device: cuda\n"))
    return run_args(path, tmp), ["no CUDA GPU is available", "device: auto"]


@case("plan asks for a Hugging Face export of a non-HF model")
def _(tmp, mp):
    text = mlp_plan().replace("export: {onnx: {exporter: legacy}}", "export: {formats: [hf]}")
    path = write(tmp, text)
    return run_args(path, tmp), ["export format 'hf'", "remove 'hf' from export.formats"]


# ------------------------------------------------------------------ flags


@case("--set without a value")
def _(tmp, mp):
    return ["validate", write(tmp, mlp_plan()), "--set", "seed"], [
        "--set 'seed': expected PATH=VALUE"
    ]


@case("--set indexes a stage that does not exist")
def _(tmp, mp):
    return ["validate", write(tmp, mlp_plan(FINETUNE)), "--set", "stages.4.finetune.lr=1"], [
        "stages.4 is not an index of a list of 1 items"
    ]


@case("--gate names no gate")
def _(tmp, mp):
    return ["run", write(tmp, mlp_plan()), "--dry-run", "--gate", "fastest=1"], [
        "--gate 'fastest=1'",
        "max_metric_drop",
    ]


@case("--gate value is not a number")
def _(tmp, mp):
    return ["run", write(tmp, mlp_plan()), "--dry-run", "--gate", "min_speedup=lots"], [
        "'lots' is not a number"
    ]


@case("--nproc below 1")
def _(tmp, mp):
    return ["run", write(tmp, mlp_plan()), "--nproc", "0"], ["--nproc"]


@case("an option that does not exist")
def _(tmp, mp):
    return ["run", write(tmp, mlp_plan()), "--fast"], ["No such option", "--fast"]


@case("--out is a file")
def _(tmp, mp):
    out = tmp / "out"
    out.write_text("not a folder")
    return ["run", write(tmp, mlp_plan()), "--out", out, "--no-bench"], [
        "the output directory",
        "is a file",
        "give --out a folder",
    ]


@case("--out cannot be written (permission denied)")
def _(tmp, mp):
    # Simulated: tests often run as root, for whom a read-only folder is still writable
    # (test_safety has the real read-only folder for other users).
    real_mkdir = Path.mkdir

    def denied(self, *args, **kwargs):
        if self == tmp / "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    mp.setattr(Path, "mkdir", denied)
    return ["run", write(tmp, mlp_plan()), "--out", tmp / "locked", "--no-bench"], [
        "cannot write the output directory",
        "locked",
        "Permission denied",
        "writable --out",
    ]


@case("--resume after the plan changed")
def _(tmp, mp):
    out = tmp / "out"
    run = out / ".run"
    run.mkdir(parents=True)
    (run / "state.json").write_text(
        json.dumps({"version": 1, "fingerprint": "0" * 16, "stages": [{"index": 0, "done": True}]})
    )
    return ["run", write(tmp, mlp_plan(FINETUNE)), "--out", out, "--resume", "--no-bench"], [
        "changed since the interrupted run",
        "run without --resume",
    ]


@case("another run holds the output directory's lock")
def _(tmp, mp):
    import fcntl  # POSIX; the flock lock is what a live run holds there

    out = tmp / "out"
    out.mkdir()
    # Held the way a live run holds it (released by the test after the command).
    fd = os.open(out / ".compress.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()} 0\n".encode())
    _HELD.append(fd)
    return ["run", write(tmp, mlp_plan()), "--out", out, "--no-bench"], [
        "another compress run",
        f"pid {os.getpid()}",
        ".compress.lock",
        "use another --out",
    ]


@case("--safe with trust_pickle in the plan")
def _(tmp, mp):
    path = write(tmp, mlp_plan(model="  trust_pickle: true\n"))
    return ["validate", path, "--safe", "--allow-import", "sample_models"], [
        "model.trust_pickle",
        "safe mode refuses unpickling",
    ]


# ------------------------------------------------------------------ checkpoints


@case("checkpoint truncated")
def _(tmp, mp):
    cut = tmp / "cut.safetensors"
    cut.write_bytes(MLP_CHECKPOINT.read_bytes()[:-1000])
    return run_args(mlp_with_checkpoint(tmp, cut), tmp), ["cut.safetensors", "truncated"]


@case("checkpoint is an empty file")
def _(tmp, mp):
    empty = tmp / "empty.safetensors"
    empty.write_bytes(b"")
    return run_args(mlp_with_checkpoint(tmp, empty), tmp), [
        "empty.safetensors: too short to be a safetensors file (0 bytes)"
    ]


@case("checkpoint header claims a huge size")
def _(tmp, mp):
    path = tmp / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    return run_args(mlp_with_checkpoint(tmp, path), tmp), [
        "huge.safetensors: safetensors header claims",
        "corrupt or not safetensors",
    ]


@case("checkpoint tensor with an unknown dtype")
def _(tmp, mp):
    header = {"w": {"dtype": "F128", "shape": [2], "data_offsets": [0, 8]}}
    path = safetensors_with_header(tmp, header, b"\0" * 8, "dtype.safetensors")
    return run_args(mlp_with_checkpoint(tmp, path), tmp), ["tensor 'w' has unknown dtype 'F128'"]


@case("checkpoint tensor bytes outside the file")
def _(tmp, mp):
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    path = safetensors_with_header(tmp, header, b"\0" * 8, "short.safetensors")
    return run_args(mlp_with_checkpoint(tmp, path), tmp), [
        "tensor 'w' has byte range [0, 16] outside the file's 8 data bytes"
    ]


@case("checkpoint tensors overlap")
def _(tmp, mp):
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    path = safetensors_with_header(tmp, header, b"\0" * 12, "overlap.safetensors")
    return run_args(mlp_with_checkpoint(tmp, path), tmp), ["overlapping or gapped data"]


@case("checkpoint is garbage with a .pt name")
def _(tmp, mp):
    path = tmp / "junk.pt"
    path.write_bytes(b"\x00garbage" * 50)
    return run_args(mlp_with_checkpoint(tmp, path), tmp), [
        "junk.pt is not a readable PyTorch file",
        "re-save it",
    ]


@case("checkpoint of another width than model.kwargs build")
def _(tmp, mp):
    path = write(tmp, mlp_plan(model="  kwargs: {hidden: 128}\n"))
    return run_args(path, tmp), [
        "shape mismatches",
        "features.0.weight: file (256, 64) vs model (128, 64)",
        "model.kwargs",
    ]


@case("checkpoint of another architecture")
def _(tmp, mp):
    return run_args(mlp_with_checkpoint(tmp, CNN_CHECKPOINT), tmp), [
        "does not fit architecture sample_models.digits_mlp.model:build",
        "missing keys",
        "unexpected keys",
    ]


@case("checkpoint of an unsupported file type")
def _(tmp, mp):
    path = tmp / "weights.h5"
    path.write_bytes(b"HDF")
    return run_args(mlp_with_checkpoint(tmp, path), tmp), [
        "unsupported file type '.h5'",
        ".safetensors, .pt",
    ]


@case("state-dict checkpoint without an architecture")
def _(tmp, mp):
    path = write(tmp, mlp_plan().replace(f"  architecture: {MLP_ARCH}\n", ""))
    return run_args(path, tmp), ["is a state dict", "set model.architecture"]


@case("architecture module that cannot be imported")
def _(tmp, mp):
    path = write(tmp, mlp_plan().replace(MLP_ARCH, "sample_models.nope:build"))
    return run_args(path, tmp), ["cannot import 'sample_models.nope'", "check the spelling"]


@case("architecture function that does not exist")
def _(tmp, mp):
    path = write(tmp, mlp_plan().replace(MLP_ARCH, "sample_models.digits_mlp.model:buld"))
    return run_args(path, tmp), ["has no attribute 'buld'", "build"]


@case("architecture called with arguments it does not take")
def _(tmp, mp):
    path = write(tmp, mlp_plan(model="  kwargs: {heads: 4}\n"))
    return run_args(path, tmp), ["could not be called with kwargs {'heads': 4}", "fix model.kwargs"]


@case("training checkpoint with the weights under an unknown key")
def _(tmp, mp):
    from safetensors.torch import load_file

    path = tmp / "train.pt"
    torch.save({"ema": {"w": load_file(str(MLP_CHECKPOINT))}, "step": 3}, path)
    return run_args(mlp_with_checkpoint(tmp, path), tmp), [
        "no state dict under a known key (found: ema, step)",
        "model.state_dict_key",
    ]


@case("an ONNX file given to compress")
def _(tmp, mp):
    path = tmp / "m.onnx"
    path.write_bytes(b"onnx")
    return ["validate", mlp_with_checkpoint(tmp, path, FINETUNE)], [
        "an .onnx file can be benchmarked but not compressed"
    ]


# ------------------------------------------------------------------ data files


@case("data file does not exist")
def _(tmp, mp):
    return ["validate", data_plan(tmp, "train.safetensors")], [
        "data.train",
        "train.safetensors does not exist",
    ]


@case("data tensors not named after the model inputs")
def _(tmp, mp):
    # (A single unnamed tensor would feed a single-input model; two cannot be told apart.)
    pixels = {"pixels": torch.rand(8, 64), "depth": torch.rand(8, 64)}
    save_file({**pixels, "labels": torch.zeros(8, dtype=torch.long)}, str(tmp / "d.safetensors"))
    return run_args(data_plan(tmp, "d.safetensors"), tmp), [
        "holds tensors ['depth', 'pixels']",
        "inputs are ['x']",
        "name the tensors after the model inputs",
    ]


@case("data examples of the wrong shape")
def _(tmp, mp):
    save_file(
        {"x": torch.rand(8, 10), "labels": torch.zeros(8, dtype=torch.long)},
        str(tmp / "d.safetensors"),
    )
    return run_args(data_plan(tmp, "d.safetensors"), tmp), [
        "input 'x' has examples of shape (10,), the model expects (64,)"
    ]


@case("data with fewer labels than examples")
def _(tmp, mp):
    save_file(
        {"x": torch.rand(8, 64), "labels": torch.zeros(5, dtype=torch.long)},
        str(tmp / "d.safetensors"),
    )
    return run_args(data_plan(tmp, "d.safetensors"), tmp), [
        "different numbers of examples",
        "'x': 8",
        "'<labels>': 5",
    ]


@case("data source string of no known kind")
def _(tmp, mp):
    return ["validate", data_plan(tmp, "train.parquet")], [
        "data.train",
        "cannot tell what data source 'train.parquet' is",
        "builtin:digits",
    ]


@case("data built-in that does not exist")
def _(tmp, mp):
    return ["validate", data_plan(tmp, "builtin:mnist")], [
        "unknown built-in dataset 'mnist'",
        "built-ins: digits",
    ]


@case("data built-in split that does not exist")
def _(tmp, mp):
    return run_args(data_plan(tmp, "builtin:digits?split=val"), tmp), [
        "split must be train, test or all, not 'val'"
    ]


@case("text data for a model without a tokenizer")
def _(tmp, mp):
    (tmp / "d.jsonl").write_text('{"text": "hi", "label": 1}\n')
    return run_args(data_plan(tmp, "d.jsonl"), tmp), [
        "d.jsonl needs a tokenizer",
        "set model.tokenizer",
    ]


@case("data .npz holding pickled objects")
def _(tmp, mp):
    np.savez(tmp / "d.npz", x=np.array([{"a": 1}], dtype=object))
    return run_args(data_plan(tmp, "d.npz"), tmp), ["d.npz", "save arrays without pickled"]


@case("data factory that returns no dataset")
def _(tmp, mp):
    return run_args(data_plan(tmp, "tests.unit.data_sources:not_a_dataset"), tmp), [
        "returned int",
        "return a torch Dataset or DataLoader",
    ]


@case("data with NaN values makes the loss non-finite", code=3)
def _(tmp, mp):
    x = torch.rand(64, 64)
    x[5, 3] = float("nan")
    save_file({"x": x, "labels": torch.randint(0, 10, (64,))}, str(tmp / "d.safetensors"))
    plan = data_plan(tmp, "d.safetensors")
    return run_args(plan, tmp), [
        "training diverged",
        "stage 0 (finetune)",
        "the loss was nan",
        "last good weights were kept",
        "NaN/Inf values",
    ]


# ------------------------------------------------------------------ the machine

# Failures a test cannot cause for real on any machine are simulated where they would
# surface: a stage that runs out of memory or is interrupted, the disk filling up while the
# model is written (test_resume interrupts real processes).


def failing_stage(mp, error: BaseException) -> None:
    from compressor.stages import registry

    real = registry.get_stage("finetune")

    def apply(model, cfg, ctx):
        raise error

    stage = registry.StageDef("finetune", real.config, apply, real.summary)
    mp.setitem(registry._REGISTRY, "finetune", stage)


@case("GPU out of memory in a stage", code=3)
def _(tmp, mp):
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    failing_stage(mp, oom("CUDA out of memory. Tried to allocate 20.00 GiB"))
    return run_args(write(tmp, mlp_plan(FINETUNE)), tmp), [
        "out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)",
        "smaller data.batch_size",
    ]


@case("CPU allocation failure in a stage", code=3)
def _(tmp, mp):
    failing_stage(
        mp, RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8e10")
    )
    return run_args(write(tmp, mlp_plan(FINETUNE)), tmp), ["out of memory", "batch_size"]


@case("Python MemoryError in a stage", code=3)
def _(tmp, mp):
    failing_stage(mp, MemoryError())
    return run_args(write(tmp, mlp_plan(FINETUNE)), tmp), ["error: out of memory", "batch_size"]


@case("disk full while the model is written", code=3)
def _(tmp, mp):
    import safetensors.torch
    from safetensors import SafetensorError

    real_save = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        if Path(filename).parent == tmp / "out":  # the export, not the run directory
            Path(filename).write_bytes(b"partial")
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        return real_save(tensors, filename, metadata=metadata)

    mp.setattr(safetensors.torch, "save_file", full_disk)
    return run_args(write(tmp, mlp_plan(FINETUNE)), tmp), [
        "out/model.safetensors: disk full",
        "No space left on device",
        "free disk space",
        "rerun with --resume",
    ]


@case("Ctrl-C during a stage", code=130)
def _(tmp, mp):
    failing_stage(mp, KeyboardInterrupt())
    return run_args(write(tmp, mlp_plan(FINETUNE)), tmp), [
        "interrupted; finished stages are kept: rerun with --resume"
    ]


# ------------------------------------------------------------------ the test


_HELD: list[int] = []  # lock files a case holds open while the command runs


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, monkeypatch):
    builder, code = CASES[name]
    try:
        args, needles = builder(tmp_path, monkeypatch)
        result = invoke(*args)
    finally:
        while _HELD:
            os.close(_HELD.pop())
    assert_fails_cleanly(result, code, *needles)
    # A failed run leaves nothing under a final artifact name, no temporary, and no lock
    # (the NaN case is the exception by design: it exports the last good weights).
    out = tmp_path / "out"
    if not name.startswith("data with NaN"):
        leftovers = {p.name for p in out.iterdir()} if out.is_dir() else set()
        assert not {"model.safetensors", "model.onnx", "report.json"} & leftovers, leftovers
        assert not [n for n in leftovers if n.endswith(".tmp")], leftovers
        assert ".compress.lock" not in leftovers or name.startswith("another run")


def test_there_are_at_least_30_distinct_bad_inputs():
    assert len(CASES) >= 30


def test_python_tag_in_a_plan_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    write(tmp_path, f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    result = invoke("run", tmp_path / "plan.yaml", "--out", tmp_path / "out")
    assert_fails_cleanly(result, 2, "not allowed")
    assert not marker.exists()


def test_debug_shows_the_traceback(tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(MLP_CHECKPOINT.read_bytes()[:-1000])
    result = invoke(*run_args(mlp_with_checkpoint(tmp_path, cut), tmp_path), "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.output and "truncated" in result.output


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["validate", "no/such/plan.yaml"], 2, "no/such/plan.yaml does not exist"),
        (["run", "no/such/plan.yaml", "--nproc", "0"], 2, "--nproc"),
        (["inspect", str(MLP_CHECKPOINT)], 2, "compress needs the code that builds the model"),
    ],
)
def test_a_real_process_exits_with_the_code_and_no_traceback(args, code, needle):
    assert_fails_cleanly(compress_process(*args), code, needle)
