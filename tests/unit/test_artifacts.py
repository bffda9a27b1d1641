"""The compacted-model file: structure manifest round trips, tied tensors stored once,
codebook encoding, atomic writes, and refusing hostile metadata."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

from compressor.errors import CheckpointError
from compressor.files.atomic import atomic_path
from compressor.formats.architecture import ArchitectureRef
from compressor.formats.compacted import load_compressed, read_metadata, save_compressed
from compressor.formats.manifest import diff, snapshot
from sample_models.digits_mlp.model import build as build_mlp
from sample_models.text_transformer.model import build as build_text

MLP = ArchitectureRef("factory", "sample_models.digits_mlp.model:build")
TEXT = ArchitectureRef(
    "factory",
    "sample_models.text_transformer.model:build",
    {
        "vocab_size": 50,
        "classes": 3,
        "dim": 16,
        "depth": 3,
        "num_heads": 2,
        "ffn": 32,
        "max_len": 8,
    },
)


def shrink_linear_pair(first: nn.Linear, second: nn.Linear, keep: torch.Tensor) -> None:
    """Remove hidden units by hand the way a pruner does: in place, attributes updated."""
    first.weight = nn.Parameter(first.weight.data[keep].clone())
    first.bias = nn.Parameter(first.bias.data[keep].clone())
    first.out_features = len(keep)
    second.weight = nn.Parameter(second.weight.data[:, keep].clone())
    second.in_features = len(keep)


def test_hand_pruned_mlp_round_trips_exactly(tmp_path):
    torch.manual_seed(0)
    model = build_mlp()
    before = snapshot(model)
    shrink_linear_pair(model.features[0], model.features[2], torch.arange(0, 256, 2))
    manifest = diff(before, model)
    assert {"op": "set_attrs", "module": "features.0", "attrs": {"out_features": 128}} in manifest
    assert {"op": "set_attrs", "module": "features.2", "attrs": {"in_features": 128}} in manifest
    path = tmp_path / "model.safetensors"
    saved = save_compressed(model, path, architecture=MLP, manifest=manifest)
    loaded = load_compressed(path).model
    x = torch.rand(5, 64)
    assert torch.equal(loaded(x), model.eval()(x))
    assert loaded.features[0].out_features == 128
    assert saved.size_bytes < 0.8 * (256 * 64 + 256 * 256 + 256 * 10) * 4


def test_dropped_block_and_replaced_module_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_text(**TEXT.kwargs).eval()
    before = snapshot(model)
    model.blocks = nn.ModuleList([model.blocks[0], model.blocks[2]])
    model.norm = nn.Identity()
    manifest = diff(before, model)
    assert {"op": "keep_items", "module": "blocks", "indices": [0, 2]} in manifest
    assert any(op["op"] == "replace" and op["module"] == "norm" for op in manifest)
    path = tmp_path / "model.safetensors"
    save_compressed(model, path, architecture=TEXT, manifest=manifest)
    loaded = load_compressed(path).model
    ids = torch.randint(1, 50, (2, 8))
    assert len(loaded.blocks) == 2 and isinstance(loaded.norm, nn.Identity)
    assert torch.equal(loaded(ids), model(ids))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.head = nn.Linear(32, 100, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def build_tied() -> Tied:
    return Tied()


def test_tied_weights_are_stored_once_and_retied(tmp_path):
    model = Tied()
    path = tmp_path / "model.safetensors"
    saved = save_compressed(
        model, path, manifest=[], architecture=ArchitectureRef("factory", f"{__name__}:build_tied")
    )
    assert saved.aliases == {"head.weight": "embed.weight"}
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["embed.weight"]
    assert json.loads(read_metadata(path)["aliases"]) == {"head.weight": "embed.weight"}
    loaded = load_compressed(path).model
    assert loaded.head.weight is loaded.embed.weight
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(ids), model(ids))


def test_few_valued_tensors_are_codebook_encoded_losslessly(tmp_path):
    torch.manual_seed(0)
    model = build_mlp()
    codebook = torch.linspace(-0.1, 0.1, 16)
    for layer in (model.features[0], model.features[2]):
        idx = torch.randint(0, 16, layer.weight.shape)
        layer.weight.data = codebook[idx]
    path = tmp_path / "model.safetensors"
    saved = save_compressed(model, path, architecture=MLP, manifest=[])
    assert set(saved.encoded) == {"features.0.weight", "features.2.weight"}
    plain = tmp_path / "plain.safetensors"
    save_compressed(model, plain, architecture=MLP, manifest=[], codebooks=False)
    assert saved.size_bytes < 0.4 * plain.stat().st_size
    loaded = load_compressed(path).model
    assert torch.equal(loaded.features[0].weight, model.features[0].weight)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "model.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_hostile_architecture_metadata_is_refused(tmp_path):
    model = build_mlp()
    path = tmp_path / "evil.safetensors"
    save_compressed(
        model,
        path,
        manifest=[],
        architecture=ArchitectureRef("factory", "os:system", {"command": "touch x"}),
    )
    with pytest.raises(CheckpointError, match="not a model factory"):
        load_compressed(path)


def test_manifest_naming_missing_module_is_a_clear_error(tmp_path):
    model = build_mlp()
    path = tmp_path / "m.safetensors"
    save_compressed(
        model,
        path,
        architecture=MLP,
        manifest=[{"op": "set_attrs", "module": "nope.layer", "attrs": {"x": 1}}],
    )
    with pytest.raises(CheckpointError, match=r"names module 'nope\.layer'"):
        load_compressed(path)
