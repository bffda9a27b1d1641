"""Every checkpoint form loads (fixtures made here from the sample models); bad files fail
with a message that names the file and the fix; pickles are never unpickled unasked."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from compressor.errors import CheckpointError
from compressor.formats.architecture import ArchitectureRef
from compressor.formats.compacted import save_compressed
from compressor.formats.loading import load_model
from compressor.spec.sections import ModelSpec
from sample_models.digits_cnn.model import build
from tests.conftest import SAMPLES

CNN = SAMPLES / "digits_cnn" / "model.safetensors"
ARCH = "sample_models.digits_cnn.model:build"
X = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def state():
    return load_file(str(CNN))


@pytest.fixture(scope="module")
def reference(state):
    model = build()
    model.load_state_dict(state)
    return model.eval()(X).detach()


def spec(path, **kw) -> ModelSpec:
    fields = {
        "checkpoint": str(path),
        "architecture": ARCH,
        "inputs": {"x": {"shape": [1, 1, 8, 8]}},
    }
    fields.update(kw)
    return ModelSpec.model_validate(fields)


def outputs(loaded):
    return loaded.model.eval()(X).detach()


def test_safetensors_state_dict(reference):
    loaded = load_model(spec(CNN))
    assert loaded.kind == "state_dict" and loaded.prunable
    assert torch.equal(outputs(loaded), reference)
    assert loaded.architecture.ref == ARCH


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_torch_state_dict_files(tmp_path, state, reference, suffix):
    path = tmp_path / f"weights{suffix}"
    torch.save(state, path)
    loaded = load_model(spec(path))
    assert loaded.kind == "state_dict"
    assert torch.equal(outputs(loaded), reference)


@pytest.mark.parametrize("key", ["state_dict", "model", "module", "model_state_dict"])
def test_training_checkpoint_found_automatically(tmp_path, state, reference, key):
    path = tmp_path / "train.pt"
    torch.save({"epoch": 7, key: state, "optimizer": {"lr": 0.1}}, path)
    loaded = load_model(spec(path))
    assert loaded.kind == "training_checkpoint"
    assert torch.equal(outputs(loaded), reference)


def test_lightning_checkpoint_with_model_prefix(tmp_path, state, reference):
    path = tmp_path / "epoch=3.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "pytorch-lightning_version": "2.4.0",
            "epoch": 3,
        },
        path,
    )
    assert torch.equal(outputs(load_model(spec(path))), reference)


def test_ddp_module_prefix_is_stripped(tmp_path, state, reference):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    assert torch.equal(outputs(load_model(spec(path))), reference)


def test_explicit_state_dict_key(tmp_path, state, reference):
    path = tmp_path / "ema.pt"
    torch.save({"ema": {"weights": state}, "step": 10}, path)
    assert torch.equal(outputs(load_model(spec(path, state_dict_key="ema.weights"))), reference)
    with pytest.raises(CheckpointError, match=r"has no key 'ema\.nope'") as info:
        load_model(spec(path, state_dict_key="ema.nope"))
    assert "ema" in info.value.hint


def test_unknown_layout_names_the_keys(tmp_path, state):
    path = tmp_path / "odd.pt"
    torch.save({"stuff": {"w": state}, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="no state dict under a known key") as info:
        load_model(spec(path))
    assert "stuff" in str(info.value) and "state_dict_key" in info.value.hint


def test_pickled_module_is_refused_without_trust(tmp_path, reference):
    model = build()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError) as info:
        load_model(spec(path))
    message = str(info.value)
    assert str(path) in message and "was not unpickled" in message
    assert "DigitsCNN" in message and "trust_pickle" in message


def test_pickled_module_loads_with_trust(tmp_path, state, reference):
    model = build()
    model.load_state_dict(state)
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.warns(UserWarning, match="runs code stored in the file"):
        loaded = load_model(spec(path, trust_pickle=True))
    assert loaded.kind == "pickled_module"
    assert torch.equal(outputs(loaded), reference)


def test_torchscript_is_bench_only(tmp_path, state):
    model = build()
    model.load_state_dict(state)
    path = tmp_path / "scripted.pt"
    torch.jit.trace(model.eval(), X).save(str(path))
    loaded = load_model(spec(path))
    assert loaded.kind == "torchscript" and not loaded.prunable


def test_onnx_is_bench_only(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not read at load time")
    loaded = load_model(spec(path))
    assert loaded.kind == "onnx" and loaded.model is None and not loaded.prunable


def test_wrong_architecture_lists_missing_and_unexpected(tmp_path):
    mlp = SAMPLES / "digits_mlp" / "model.safetensors"
    with pytest.raises(CheckpointError) as info:
        load_model(spec(mlp))
    message = str(info.value)
    assert str(mlp) in message and "missing keys" in message and "unexpected keys" in message
    assert "model.architecture" in info.value.hint


def test_shape_mismatch_is_named():
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches .*stem\.0\.weight: file "
        r"\(64, 1, 3, 3\) vs model \(32, 1, 3, 3\)",
    ):
        load_model(spec(CNN, kwargs={"width": 32}))


def test_bad_factory_kwargs(tmp_path):
    with pytest.raises(CheckpointError, match="could not be called with kwargs"):
        load_model(spec(CNN, kwargs={"depth": 3}))


def test_missing_module_and_attribute():
    with pytest.raises(CheckpointError, match=r"cannot import 'sample_models\.nope'"):
        load_model(spec(CNN, architecture="sample_models.nope:build"))
    with pytest.raises(CheckpointError, match="has no attribute 'buld'"):
        load_model(spec(CNN, architecture="sample_models.digits_cnn.model:buld"))


def test_state_dict_needs_an_architecture():
    with pytest.raises(CheckpointError, match="needs the code that builds the model"):
        load_model(spec(CNN, architecture=None))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(spec(tmp_path / "gone.safetensors"))


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(CNN.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(spec(path))


def test_garbage_torch_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        load_model(spec(path))


def test_compress_output_rebuilds_without_architecture_in_plan(tmp_path, state, reference):
    model = build()
    model.load_state_dict(state)
    path = tmp_path / "model.safetensors"
    save_compressed(
        model.eval(),
        path,
        architecture=ArchitectureRef("factory", ARCH),
        manifest=[],
        inputs={"x": {"shape": [1, 1, 8, 8], "dtype": "float32"}},
    )
    loaded = load_model(ModelSpec(checkpoint=str(path)))
    assert loaded.kind == "compressed"
    assert list(loaded.input_specs) == ["x"]
    assert torch.equal(outputs(loaded), reference)


class _Exploit:
    """Unpickling this calls os.system: it would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".ckpt"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(spec(path))
    assert not marker.exists()
    assert "system" in str(info.value) and "was not unpickled" in str(info.value)
