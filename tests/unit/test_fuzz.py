"""Property-based fuzzing of the plan loader and the checkpoint readers: random and mutated
plans and files only ever raise the documented, typed errors (never a raw exception)."""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from compressor.errors import CheckpointError, CompressError, PlanError
from compressor.files.tensors import read_tensor_mapping
from compressor.plan.load import load_plan
from tests.conftest import SAMPLES, plan_schema_keys

FUZZ = settings(
    max_examples=int(os.environ.get("COMPRESS_FUZZ_EXAMPLES", "500")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

BASE_PLAN = {
    "version": 1,
    "model": {
        "checkpoint": str(SAMPLES / "digits_mlp" / "model.safetensors"),
        "architecture": "sample_models.digits_mlp.model:build",
        "inputs": {"x": {"shape": [1, 64]}},
    },
    "data": {"train": "builtin:digits?split=train", "eval": "builtin:digits?split=test"},
    "stages": [{"prune": {"amount": 0.5}}, {"finetune": {"epochs": 1}}],
    "gates": {"max_metric_drop": 0.01},
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = [*plan_schema_keys(), "x"]  # and a key no schema has


def _mutate(data, path, value):
    node = data
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and node:
            node = node[hash(key) % len(node)]
        else:
            return data
    if isinstance(node, dict):
        node[path[-1]] = value
    elif isinstance(node, list) and node:
        node[hash(path[-1]) % len(node)] = value
    return data


def expect_plan_error_only(path: Path) -> None:
    with contextlib.suppress(PlanError):
        load_plan(path)


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_random_text_plans_give_plan_errors_only(tmp_path, text):
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    expect_plan_error_only(path)


@FUZZ
@given(
    st.lists(
        st.tuples(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4), values),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_plans_give_plan_errors_only(tmp_path, mutations):
    import copy

    data = copy.deepcopy(BASE_PLAN)
    for path, value in mutations:
        data = _mutate(data, path, value)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    expect_plan_error_only(path)


def _small_state() -> dict[str, torch.Tensor]:
    return {
        "a.weight": torch.arange(12.0).reshape(3, 4),
        "a.bias": torch.ones(3),
        "b": torch.arange(5, dtype=torch.int64),
    }


SAFETENSORS = save(_small_state())
TORCH_BYTES = io.BytesIO()
torch.save(_small_state(), TORCH_BYTES)
TORCH_FILE = TORCH_BYTES.getvalue()


def expect_checkpoint_error_only(path: Path) -> None:
    try:
        result = read_tensor_mapping(path)
    except CheckpointError:
        return
    assert isinstance(result, dict)


mutation = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8)


def _apply(raw: bytes, edits, cut) -> bytes:
    data = bytearray(raw)
    for pos, byte in edits:
        data[pos % len(data)] = byte
    return bytes(data[: max(0, len(data) - cut)])


@FUZZ
@given(mutation, st.integers(0, 64))
def test_mutated_safetensors_give_checkpoint_errors_only(tmp_path, edits, cut):
    path = tmp_path / "m.safetensors"
    path.write_bytes(_apply(SAFETENSORS, edits, cut))
    expect_checkpoint_error_only(path)


@FUZZ
@given(mutation, st.integers(0, 64))
def test_mutated_torch_files_give_checkpoint_errors_only(tmp_path, edits, cut):
    path = tmp_path / "m.pt"
    path.write_bytes(_apply(TORCH_FILE, edits, cut))
    expect_checkpoint_error_only(path)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([".safetensors", ".pt", ".npz", ".ckpt"]))
def test_random_bytes_give_checkpoint_errors_only(tmp_path, raw, suffix):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(raw)
    expect_checkpoint_error_only(path)


def test_fuzz_budget_is_at_least_2000_cases():
    # Five properties at the configured number of examples each.
    assert 5 * int(os.environ.get("COMPRESS_FUZZ_EXAMPLES", "500")) >= 2000


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled objects"):
        read_tensor_mapping(path)


def test_zip_that_is_not_a_torch_file(tmp_path):
    path = tmp_path / "z.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(CompressError):
        read_tensor_mapping(path)
