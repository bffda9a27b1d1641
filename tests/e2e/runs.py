"""Helpers for end-to-end tests of ``compress run``: tiny plans on the digits MLP, the CLI
in-process (fast) or as a real subprocess, and checks of a failure's exit code and message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from tests.conftest import ROOT, SAMPLES

MLP_CHECKPOINT = SAMPLES / "digits_mlp" / "model.safetensors"
MLP_ARCH = "sample_models.digits_mlp.model:build"


def mlp_plan(stages: str = "", *, data: str | None = None, model: str = "", top: str = "") -> str:
    """A plan for the digits MLP; ``stages`` is the YAML body of ``stages:`` (indented
    items), ``data`` replaces the ``data:`` body, ``model`` adds lines to ``model:``."""
    data = (
        data
        if data is not None
        else ("  train: builtin:digits?split=train\n  eval: builtin:digits?split=test\n")
    )
    return (
        f"version: 1\n{top}"
        "model:\n"
        f"  checkpoint: {MLP_CHECKPOINT}\n"
        f"  architecture: {MLP_ARCH}\n"
        "  inputs:\n"
        "    x: {shape: [1, 64], dtype: float32, low: 0.0, high: 1.0}\n"
        f"{model}"
        f"data:\n{data}"
        + (f"stages:\n{stages}" if stages else "")
        + "export: {onnx: {exporter: legacy}}\n"
    )


def invoke(*args: object):
    """Run the CLI in this process (the real Typer app, as the console script runs it)."""
    return CliRunner().invoke(app(), [str(a) for a in args])


def app():
    from cli.main import app as typer_app

    return typer_app


def compress_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("compress")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cli.main"]


def compress_process(*args: object, env: dict | None = None, timeout: float = 300):
    """Run the installed ``compress`` console script as a separate process."""
    full_env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [*compress_cmd(), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def output_of(result) -> str:
    """Everything a result printed (stdout and stderr), for both runner kinds."""
    if isinstance(result, subprocess.CompletedProcess):
        return result.stdout + result.stderr
    return result.output


def exit_code_of(result) -> int:
    return (
        result.returncode if isinstance(result, subprocess.CompletedProcess) else result.exit_code
    )


def assert_fails_cleanly(result, code: int, *needles: str) -> str:
    """The run exited with ``code``, printed every needle, and no traceback.

    Returns:
        The output, for further checks.
    """
    text = output_of(result)
    assert exit_code_of(result) == code, f"exit {exit_code_of(result)} != {code}:\n{text}"
    if not isinstance(result, subprocess.CompletedProcess):
        # An exception that escaped the CLI's handler would be stored here by CliRunner.
        assert result.exception is None or isinstance(result.exception, SystemExit), text
    assert "Traceback" not in text, text
    assert "internal error" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"
    return text


__all__ = ["ROOT", "SAMPLES"]
