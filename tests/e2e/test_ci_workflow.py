"""The GitHub Actions job in docs/ci/compress.yml, run locally: its shell steps (validate,
compress with gates, post the summary) through bash on the sample CNN, exactly as written
apart from the output folder; a failing gate makes the job's compress step exit 1 while the
summary and the uploaded files are still there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / "docs" / "ci" / "compress.yml"


def _steps() -> list[dict]:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["shrink"]
    return job["steps"]


def _shell_steps() -> list[tuple[str, str]]:
    # The install step is what this test environment already is (pip install -e ".[dev]").
    return [
        (s["name"], s["run"])
        for s in _steps()
        if "run" in s and not s["name"].lower().startswith("install")
    ]


def _bash(script: str, out: Path, summary: Path) -> subprocess.CompletedProcess:
    # `compress` as the job finds it: on PATH, from the environment the tests run in.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "GITHUB_STEP_SUMMARY": str(summary)}
    return subprocess.run(
        ["bash", "-e", "-c", script.replace("out/ci", str(out))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_workflow_is_a_complete_job():
    names = [s.get("name", "") for s in _steps()]
    assert any("Install" in n for n in names)
    steps = {s.get("name", ""): s for s in _steps()}
    summary = next(s for n, s in steps.items() if "summary" in n.lower())
    upload = next(s for s in _steps() if s.get("uses", "").startswith("actions/upload-artifact"))
    # The report is posted and kept also when a gate failed the compress step.
    assert summary["if"] == "always()" and upload["if"] == "always()"
    assert "--gate" in next(r for n, r in _shell_steps() if "Compress" in n)


@pytest.mark.slow
def test_the_workflow_commands_pass_locally_and_a_failing_gate_exits_1(tmp_path):
    steps = _shell_steps()
    upload = next(s for s in _steps() if s.get("uses", "").startswith("actions/upload-artifact"))
    uploaded = [line.strip() for line in upload["with"]["path"].splitlines() if line.strip()]

    out, summary = tmp_path / "ci", tmp_path / "summary.md"
    codes = {name: _bash(script, out, summary) for name, script in steps}
    compress_step = next(n for n in codes if "Compress" in n)
    for name, result in codes.items():
        if name != compress_step:
            assert result.returncode == 0, (name, result.stderr[-2000:])
    report = json.loads((out / "report.json").read_text())
    # The compress step's exit code is exactly what the gates decided (0, or 1 on a gate).
    expected = 1 if report["gates"]["failed"] else 0
    assert codes[compress_step].returncode == expected, codes[compress_step].stderr[-2000:]
    assert {g["gate"] for g in report["gates"]["checked"]} == {
        "max_metric_drop",
        "max_size_ratio",
        "min_speedup",
    }
    assert "compress" in summary.read_text().lower()
    for path in uploaded:
        assert (ROOT / path.replace("out/ci", str(out))).is_file(), path

    # The same job with a gate nothing can meet: the compress step fails the build (exit 1)
    # naming the gate, and the summary step still posts the report.
    failing = tmp_path / "failing"
    script = dict(steps)[compress_step].replace(
        "--gate min_speedup=1.3", "--gate min_speedup=1.3 --gate min_metric=1.01"
    )
    result = _bash(script, failing, tmp_path / "summary2.md")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "min_metric" in result.stdout + result.stderr
    post = next(r for n, r in steps if "summary" in n.lower())
    assert _bash(post, failing, tmp_path / "summary2.md").returncode == 0
    assert "min_metric" in (tmp_path / "summary2.md").read_text()
