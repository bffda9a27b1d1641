"""The CLI through its real entry point: help, completion, validate, schema, init, inspect,
dry runs and bad flags (exit codes and messages, never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SAMPLES, cnn_model_block

COMMANDS = ["run", "validate", "schema", "init", "inspect", "bench"]


def compress(*args: str, cwd: Path = ROOT, env: dict | None = None):
    """Run the installed console script (falls back to ``python -m cli.main``)."""
    exe = Path(sys.executable).with_name("compress")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cli.main"]
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=300
    )


def assert_no_traceback(result) -> None:
    assert "Traceback" not in result.stdout + result.stderr


def test_top_level_help_lists_every_command():
    result = compress("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout
    assert "Exit codes" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command):
    result = compress(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "--help" in result.stdout
    assert_no_traceback(result)


def test_shell_completion_completes_commands_and_options():
    # What bash's completion function runs on <TAB>; independent of the shell detection that
    # --show-completion needs (which has no shell to detect under CI).
    def complete(line: str) -> list[str]:
        words = line.split(" ")
        env = {
            "COMP_WORDS": line,
            "COMP_CWORD": str(len(words) - 1),
            "_COMPRESS_COMPLETE": "complete_bash",
        }
        result = compress(env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert complete("compress va") == ["validate"]
    assert "--dry-run" in complete("compress run --dr")
    assert {"run", "bench", "inspect"} <= set(complete("compress "))


def test_version():
    result = compress("--version")
    assert result.returncode == 0 and result.stdout.startswith("compress ")


@pytest.mark.parametrize("plan", sorted(SAMPLES.glob("*/plan*.yaml")), ids=lambda p: p.parent.name)
def test_validate_shipped_plans(plan):
    result = compress("validate", str(plan))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_broken_plan_lists_every_error(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "model:\n  checkpoint: missing.safetensors\n  architecture: not-a-ref\n"
        "stages:\n  - prune: {amount: 2, criterion: l9, bogus: 1}\n"
    )
    result = compress("validate", str(plan))
    assert result.returncode == 2
    assert_no_traceback(result)
    err = result.stderr
    for needle in (
        "model.architecture",
        "stages.0.prune.amount",
        "stages.0.prune.criterion",
        "stages.0.prune.bogus",
        "missing.safetensors does not exist",
    ):
        assert needle in err, err
    assert f"{plan}:5:" in err


def test_validate_yaml_syntax_error(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("model: {checkpoint: a\n")
    result = compress("validate", str(plan))
    assert result.returncode == 2 and "YAML syntax error" in result.stderr
    assert_no_traceback(result)


def test_validate_missing_plan():
    result = compress("validate", "no/such/plan.yaml")
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_set_override_is_validated():
    plan = SAMPLES / "digits_cnn" / "plan.yaml"
    result = compress("validate", str(plan), "--set", "stages.0.prune.criterion=magic")
    assert result.returncode == 2 and "--set: stages.0.prune.criterion" in result.stderr


def test_schema_is_json_schema_of_the_plan(tmp_path):
    result = compress("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "Plan" and "stages" in schema["properties"]
    out = tmp_path / "schema.json"
    assert compress("schema", "--out", str(out)).returncode == 0
    assert json.loads(out.read_text()) == schema


def test_init_writes_a_plan_that_validates(tmp_path):
    out = tmp_path / "plan.yaml"
    ckpt = SAMPLES / "digits_cnn" / "model.safetensors"
    result = compress(
        "init", str(ckpt), "-a", "sample_models.digits_cnn.model:build", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert text.count("#") >= 5, "the starter plan should be commented"
    data = yaml.safe_load(text)
    assert data["model"]["inputs"]["x"]["shape"][1] == 1  # guessed from the first conv
    assert compress("validate", str(out)).returncode == 0
    again = compress("init", str(ckpt), "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_inspect_checkpoint_with_input():
    result = compress(
        "inspect",
        str(SAMPLES / "digits_mlp" / "model.safetensors"),
        "-a",
        "sample_models.digits_mlp.model:build",
        "--input",
        "x=1x64",
    )
    assert result.returncode == 0, result.stderr
    assert "features.0" in result.stdout and "Linear" in result.stdout
    assert "MACs: 84.48k" in result.stdout  # 64*256 + 256*256 + 256*10


def test_inspect_bad_input_flag():
    result = compress(
        "inspect",
        str(SAMPLES / "digits_mlp" / "model.safetensors"),
        "-a",
        "sample_models.digits_mlp.model:build",
        "--input",
        "x=banana",
    )
    assert result.returncode == 2 and "NAME=SHAPE" in result.stderr
    assert_no_traceback(result)


def test_dry_run_prints_resolved_plan_and_loads_nothing(tmp_path):
    plan = tmp_path / "plan.yaml"
    # The checkpoint is a junk file: a dry run must not read it.
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not really")
    plan.write_text(cnn_model_block(junk) + "stages:\n  - prune: {amount: 0.5}\n")
    result = compress("run", str(plan), "--dry-run", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "criterion: l2" in result.stdout  # defaults are resolved
    assert not (tmp_path / "out").exists()


def test_unknown_option_is_exit_2():
    result = compress("run", "--no-such-flag")
    assert result.returncode == 2
    assert_no_traceback(result)


def test_bad_gate_flag():
    plan = SAMPLES / "digits_cnn" / "plan.yaml"
    result = compress("run", str(plan), "--gate", "fastest=1", "--dry-run")
    assert result.returncode == 2 and "--gate 'fastest=1'" in result.stderr
