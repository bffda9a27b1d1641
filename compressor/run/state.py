"""Resume state: the plan's fingerprint (what a resumed run must match), which stages have
finished, and clearing stale stage files and previous artifacts."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from compressor.errors import (
    StageError,
)
from compressor.files.atomic import write_json_atomic
from compressor.formats.loading import resolve_path

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
    "model.int8-static.onnx",
    "model.int8-static.onnx.data",
    "model.fp16.onnx",
    "model.fp16.onnx.data",
    "decoder_with_past.onnx",
    "decoder_with_past.onnx.data",
    "report.json",
    "report.md",
    "report.png",
)


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


def diverged_stages(stage_reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stages whose training stopped on a non-finite loss (``compressor.training.loop`` records
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

    for name in FINAL_ARTIFACTS:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "tokenizer", ignore_errors=True)  # a rewritten tokenizer (export.py)
