"""Untrusted input runs no code: pickles are refused unless the plan trusts them (and never in
safe mode), ``--safe`` refuses every import the command line did not allow, and a file's
metadata cannot name a dangerous callable. Each malicious file here would create a marker
file if it ran; the tests check that it does not appear."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import load_file

from compressor.formats.architecture import ArchitectureRef
from compressor.formats.compacted import save_compressed
from sample_models.digits_mlp.model import build
from tests.e2e.runs import (
    MLP_ARCH,
    MLP_CHECKPOINT,
    SAMPLES,
    assert_fails_cleanly,
    compress_process,
    invoke,
    mlp_plan,
)


class Exploit:
    """Unpickling this runs ``touch MARKER`` (through os.system)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(tmp_path, suffix=".pt"):
    """A training checkpoint with real weights and a payload; returns (file, marker)."""
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    state = load_file(str(MLP_CHECKPOINT))
    torch.save({"state_dict": state, "payload": Exploit(marker)}, path)
    return path, marker


def plan_for(tmp_path, checkpoint, model_extra: str = "", top: str = ""):
    text = mlp_plan(model=model_extra, top=top).replace(str(MLP_CHECKPOINT), str(checkpoint))
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


def test_malicious_pickle_is_refused_by_a_real_run_and_creates_nothing(tmp_path):
    evil, marker = evil_checkpoint(tmp_path)
    plan = plan_for(tmp_path, evil)
    result = compress_process("run", plan, "--out", tmp_path / "out", "--no-bench")
    assert_fails_cleanly(result, 2, str(evil), "posix.system", "was not unpickled", "trust_pickle")
    assert not marker.exists()
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".ckpt", ".pth"])
@pytest.mark.parametrize("command", ["run", "inspect", "bench", "data"])
def test_malicious_pickle_is_refused_by_every_command(tmp_path, command, suffix):
    evil, marker = evil_checkpoint(tmp_path, suffix)
    if command == "run":
        args = ["run", plan_for(tmp_path, evil), "--out", tmp_path / "out", "--no-bench"]
    elif command == "inspect":
        args = ["inspect", evil, "-a", MLP_ARCH, "--input", "x=1x64"]
    elif command == "bench":
        args = ["bench", evil, "-a", MLP_ARCH, "--input", "x=1x64", "--runtime", "torch"]
    else:  # the same file given as training data
        if suffix not in (".pt", ".pth"):
            pytest.skip("data files are .pt/.pth")
        data = f"  train: {evil}\n  eval: builtin:digits?split=test\n"
        plan = tmp_path / "plan.yaml"
        plan.write_text(mlp_plan("  - finetune: {max_steps: 1}\n", data=data))
        args = ["run", plan, "--out", tmp_path / "out", "--no-bench"]
    assert_fails_cleanly(invoke(*args), 2, "was not unpickled", "system")
    assert not marker.exists()


def test_trust_pickle_is_refused_in_safe_mode_even_at_run_time(tmp_path):
    evil, marker = evil_checkpoint(tmp_path)
    plan = plan_for(tmp_path, evil, model_extra="  trust_pickle: true\n")
    # Validation refuses it, and so does the loader (for library callers that skip it).
    result = invoke(
        "run", plan, "--out", tmp_path / "out", "--safe", "--allow-import", "sample_models"
    )
    assert_fails_cleanly(result, 2, "model.trust_pickle", "safe mode refuses unpickling")
    from compressor.errors import CheckpointError
    from compressor.formats.loading import load_model
    from compressor.plan.load import load_plan

    loaded = load_plan(plan, ["safe=false"])  # a plan that passed validation without --safe
    with pytest.raises(CheckpointError, match="safe mode refuses"):
        load_model(loaded.plan.model, loaded.base_dir, safe=True)
    assert not marker.exists()


def test_trusted_pickle_does_run_without_safe_mode(tmp_path):
    # The control experiment: the payload is real, and only trust_pickle lets it run.
    evil, marker = evil_checkpoint(tmp_path)
    plan = plan_for(tmp_path, evil, model_extra="  trust_pickle: true\n")
    result = invoke("run", plan, "--out", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0
    from compressor.formats.loading import load_model
    from compressor.plan.load import load_plan

    loaded = load_plan(plan)
    with pytest.warns(UserWarning, match="runs code stored in the file"):
        load_model(loaded.plan.model, loaded.base_dir)
    assert marker.exists()


def test_plain_pickle_file_of_unknown_format_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "raw.bin"
    path.write_bytes(pickle.dumps(Exploit(marker)))
    result = invoke("inspect", path, "-a", MLP_ARCH)
    assert_fails_cleanly(result, 2, "raw.bin")
    assert not marker.exists()


def test_safe_refuses_an_import_string_naming_the_module_and_the_flag(tmp_path):
    plan = plan_for(tmp_path, MLP_CHECKPOINT)
    result = compress_process("run", plan, "--out", tmp_path / "out", "--safe")
    assert_fails_cleanly(
        result,
        2,
        "model.architecture",
        "safe mode refuses importing 'sample_models.digits_mlp.model'",
        "--allow-import sample_models",
    )
    assert not (tmp_path / "out").exists()  # refused before any work


def test_safe_true_in_the_plan_refuses_too(tmp_path):
    plan = plan_for(tmp_path, MLP_CHECKPOINT, top="safe: true\n")
    assert_fails_cleanly(invoke("validate", plan), 2, "safe mode refuses importing")


def test_set_cannot_turn_safe_mode_off(tmp_path):
    plan = plan_for(tmp_path, MLP_CHECKPOINT)
    result = invoke("validate", plan, "--safe", "--set", "safe=false")
    assert_fails_cleanly(result, 2, "safe mode refuses importing")


def test_safe_refuses_module_function_data_sources_unless_allowed(tmp_path):
    data = "  train: tests.unit.data_sources:pairs_dataset\n  eval: builtin:digits?split=test\n"
    plan = tmp_path / "plan.yaml"
    plan.write_text(mlp_plan("  - finetune: {max_steps: 1}\n", data=data))
    refused = invoke("validate", plan, "--safe", "--allow-import", "sample_models")
    assert_fails_cleanly(
        refused,
        2,
        "data.train",
        "safe mode refuses the 'module:function' data source",
        "--allow-import tests",
    )
    allowed = invoke("validate", plan, "--safe", "--allow-import", "sample_models,tests.unit")
    assert allowed.exit_code == 0, allowed.output


def test_allow_import_is_a_prefix_of_whole_module_names(tmp_path):
    plan = plan_for(tmp_path, MLP_CHECKPOINT)
    # "sample" is not the package "sample_models": prefixes match dotted names, not text.
    result = invoke("validate", plan, "--safe", "--allow-import", "sample")
    assert_fails_cleanly(result, 2, "safe mode refuses importing")
    assert (
        invoke("validate", plan, "--safe", "--allow-import", "sample_models.digits_mlp").exit_code
        == 0
    )


@pytest.mark.parametrize("sample", sorted(p.parent.name for p in SAMPLES.glob("*/plan.yaml")))
def test_shipped_sample_plans_validate_in_safe_mode_with_allow_import(sample):
    plan = SAMPLES / sample / "plan.yaml"
    if invoke("validate", plan).exit_code != 0:
        pytest.skip(f"{sample}/plan.yaml is not valid here even without --safe")
    result = invoke("validate", plan, "--safe", "--allow-import", "sample_models")
    assert result.exit_code == 0, result.output


def test_a_safe_run_with_allow_import_runs_and_resumes(tmp_path):
    # Resuming reloads each finished stage's file, whose architecture import safe mode checks
    # again: the --allow-import of the command line must reach it.
    plan = tmp_path / "plan.yaml"
    plan.write_text(mlp_plan("  - finetune: {max_steps: 2}\n"))
    out = tmp_path / "out"
    args = ["run", plan, "--out", out, "--no-bench", "--safe", "--allow-import", "sample_models"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    again = invoke(*args, "--resume")
    assert again.exit_code == 0, again.output
    assert "resumed: stage(s) 0-0" in again.output
    assert (out / "model.safetensors").read_bytes()  # exported again from the stage file


def test_environment_variable_allows_imports_too(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_ALLOW_IMPORTS", "sample_models")
    plan = plan_for(tmp_path, MLP_CHECKPOINT)
    assert invoke("validate", plan, "--safe").exit_code == 0


def compressed_with_architecture(tmp_path, ref: str, kwargs: dict | None = None):
    path = tmp_path / "model.safetensors"
    save_compressed(
        build().eval(),
        path,
        architecture=ArchitectureRef("factory", MLP_ARCH),
        manifest=[],
        inputs={"x": {"shape": [1, 64], "dtype": "float32"}},
    )
    # Forge the architecture the file names, as an attacker would.
    import json
    import struct

    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"]["architecture"] = json.dumps(
        {"kind": "factory", "ref": ref, "kwargs": kwargs or {}, "extra": {}}
    )
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])
    return path


def test_file_metadata_cannot_name_a_command_runner(tmp_path):
    marker = tmp_path / "pwned"
    path = compressed_with_architecture(tmp_path, "os:system", {"command": f"touch {marker}"})
    result = invoke("inspect", path)
    assert_fails_cleanly(
        result,
        2,
        "names 'os:system' as its architecture",
        "not a model factory",
        "may be malicious",
    )
    assert not marker.exists()


def test_safe_mode_refuses_a_files_architecture_unless_allowed(tmp_path):
    path = compressed_with_architecture(tmp_path, MLP_ARCH)
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"version: 1\nmodel:\n  checkpoint: {path}\nexport: {{formats: [onnx]}}\n")
    refused = invoke("run", plan, "--out", tmp_path / "out", "--no-bench", "--safe")
    assert_fails_cleanly(
        refused,
        2,
        "architecture: importing 'sample_models.digits_mlp.model'",
        "--allow-import sample_models",
    )
    allowed = invoke(
        "run",
        plan,
        "--out",
        tmp_path / "out",
        "--no-bench",
        "--safe",
        "--allow-import",
        "sample_models",
    )
    assert allowed.exit_code == 0, allowed.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_exit_2(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = invoke(
            "run", plan_for(tmp_path, MLP_CHECKPOINT), "--out", locked / "out", "--no-bench"
        )
        assert_fails_cleanly(result, 2, "cannot write the output directory", "writable --out")
    finally:
        locked.chmod(0o755)
