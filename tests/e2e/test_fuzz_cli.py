"""Property-based fuzzing through the CLI: random and mutated plans, ``--set`` overrides and
checkpoint files (plain state dicts, torch pickles, compress outputs with forged metadata)
given to ``compress validate`` / ``compress inspect`` never print a traceback and exit only
with a documented code: 0 (accepted) or 2 (bad input, with a message).

``tests/unit/test_fuzz.py`` fuzzes the same readers at the library level; this file checks
what a user sees. ``COMPRESS_FUZZ_CLI_EXAMPLES`` (default 300 per property, 7 properties)
sets the budget: the default is 2,100 cases.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
from pathlib import Path

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from compressor.formats.architecture import ArchitectureRef
from compressor.formats.compacted import save_compressed
from sample_models.digits_mlp.model import build
from tests.conftest import plan_schema_keys
from tests.e2e.runs import MLP_ARCH, invoke, mlp_plan

EXAMPLES = int(os.environ.get("COMPRESS_FUZZ_CLI_EXAMPLES", "300"))
PROPERTIES = 7
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INSPECT = ["-a", MLP_ARCH, "--input", "x=1x64"]


def assert_documented(result, allowed=(0, 2)) -> None:
    """The CLI exited with a documented code and printed no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in allowed, result.output
    assert "Traceback" not in result.output
    assert "internal error" not in result.output, result.output
    if result.exit_code == 2:
        assert "rror" in result.output  # "error:" or typer's "Error" box: a message, not silence


def cli_on_file(suffix: str, raw: bytes, *args: str, name: str = "m"):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}{suffix}"
        path.write_bytes(raw)
        command = args[0]
        return invoke(command, path, *args[1:])


# ------------------------------------------------------------------ plans

PLAN_TEXT = mlp_plan("  - prune: {amount: 0.5}\n  - finetune: {epochs: 1, lr: 1.0e-3}\n")
KEYS = [*plan_schema_keys(), "x", "0", "1", "-1", "99"]  # + keys no schema has
yaml_scalars = st.one_of(
    st.sampled_from(
        [
            "null",
            "true",
            "false",
            ".nan",
            ".inf",
            "-.inf",
            "1e308",
            "0",
            "-1",
            "[]",
            "{}",
            "[1, 2",
            "'",
            "&a [*a]",
            "!!python/name:os.system",
            "~",
            "builtin:digits",
            "os:system",
            "x" * 300,
        ]
    ),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=30),
)


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400))
def test_random_text_plans_exit_2_or_0(text):
    assert_documented(cli_on_file(".yaml", text.encode("utf-8"), "validate"))


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, len(PLAN_TEXT)), st.integers(0, 12), st.text(max_size=8)),
        min_size=1,
        max_size=6,
    )
)
def test_mutated_plan_text_exits_2_or_0(edits):
    # Cut, insert and replace characters of a valid plan: syntax errors near valid structure.
    text = PLAN_TEXT
    for pos, cut, insert in edits:
        pos %= len(text) + 1
        text = text[:pos] + insert + text[pos + cut :]
    assert_documented(cli_on_file(".yaml", text.encode("utf-8"), "validate"))


@FUZZ
@given(
    st.lists(
        st.tuples(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4), yaml_scalars),
        min_size=1,
        max_size=4,
    )
)
def test_random_set_overrides_exit_2_or_0(overrides):
    sets = []
    for path, value in overrides:
        sets += ["--set", f"{'.'.join(path)}={value}"]
    assert_documented(cli_on_file(".yaml", PLAN_TEXT.encode(), "validate", *sets))


# ------------------------------------------------------------------ checkpoints

STATE = {k: v.contiguous() for k, v in build().state_dict().items()}
SAFETENSORS = save(STATE)
_buffer = io.BytesIO()
torch.save(STATE, _buffer)
TORCH_FILE = _buffer.getvalue()
with tempfile.TemporaryDirectory() as _tmp:
    _path = Path(_tmp) / "model.safetensors"
    save_compressed(
        build().eval(),
        _path,
        architecture=ArchitectureRef("factory", MLP_ARCH),
        manifest=[{"op": "set_attrs", "module": "classifier", "attrs": {"in_features": 256}}],
        inputs={"x": {"shape": [1, 64], "dtype": "float32"}},
    )
    COMPRESSED = _path.read_bytes()
HEADER_END = 8 + struct.unpack("<Q", COMPRESSED[:8])[0]

edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8)


def mutate(raw: bytes, changes, cut: int, header_end: int | None = None) -> bytes:
    data = bytearray(raw)
    for pos, byte in changes:
        # Half the edits land in the header (JSON, offsets), where the parsing happens.
        span = header_end if header_end and pos % 2 else len(data)
        data[pos % span] = byte
    return bytes(data[: max(0, len(data) - cut)])


@FUZZ
@given(edits, st.integers(0, 64))
def test_mutated_safetensors_checkpoints_exit_2_or_0(changes, cut):
    header_end = 8 + struct.unpack("<Q", SAFETENSORS[:8])[0]
    raw = mutate(SAFETENSORS, changes, cut, header_end)
    assert_documented(cli_on_file(".safetensors", raw, "inspect", *INSPECT))


@FUZZ
@given(edits, st.integers(0, 64), st.sampled_from([".pt", ".bin", ".ckpt"]))
def test_mutated_torch_checkpoints_exit_2_or_0(changes, cut, suffix):
    raw = mutate(TORCH_FILE, changes, cut)
    assert_documented(cli_on_file(suffix, raw, "inspect", *INSPECT))


@FUZZ
@given(st.binary(max_size=600), st.sampled_from([".safetensors", ".pt", ".npz", ".onnx", ".h5"]))
def test_random_bytes_as_checkpoints_exit_2_or_0(raw, suffix):
    assert_documented(cli_on_file(suffix, raw, "inspect", *INSPECT))


# Forged metadata of a compress output: valid JSON of the wrong shape in every field that
# the loader interprets (architecture, manifest, aliases, encoded, inputs).
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 300),
        st.floats(allow_nan=False),
        st.sampled_from(
            [
                "factory",
                "hf",
                "codebook",
                "set_attrs",
                "keep_items",
                "replace",
                "classifier",
                "features.0",
                "features",
                "in_features",
                MLP_ARCH,
                "os:system",
                "classifier.weight",
                "x",
            ]
        ),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "kind",
                    "ref",
                    "kwargs",
                    "extra",
                    "op",
                    "module",
                    "attrs",
                    "indices",
                    "type",
                    "config",
                    "encoding",
                    "dtype",
                    "shape",
                    "in_features",
                    "out_features",
                    "hidden",
                    "x",
                ]
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=10,
)
META_KEYS = ["architecture", "manifest", "aliases", "encoded", "inputs", "format_version"]


@FUZZ
@given(
    st.dictionaries(st.sampled_from(META_KEYS), json_values, min_size=1, max_size=3), st.booleans()
)
def test_compress_files_with_forged_metadata_exit_2_or_0(forged, raw_text):
    header_len = struct.unpack("<Q", COMPRESSED[:8])[0]
    header = json.loads(COMPRESSED[8:HEADER_END])
    meta = header["__metadata__"]
    for key, value in forged.items():
        meta[key] = value if raw_text and isinstance(value, str) else json.dumps(value)
    text = json.dumps(header).encode()
    raw = struct.pack("<Q", len(text)) + text + COMPRESSED[8 + header_len :]
    assert_documented(cli_on_file(".safetensors", raw, "inspect", name="model"))


def test_fuzz_cli_budget_is_at_least_2000_cases():
    assert PROPERTIES * EXAMPLES >= 2000 or "COMPRESS_FUZZ_CLI_EXAMPLES" in os.environ


def test_plan_fuzz_base_is_a_valid_plan():
    # The mutations start from a plan that passes, so they explore near valid input.
    assert yaml.safe_load(PLAN_TEXT)["stages"]
    assert_documented(cli_on_file(".yaml", PLAN_TEXT.encode(), "validate"), allowed=(0,))
