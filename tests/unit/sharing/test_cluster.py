"""cluster-weights: deterministic 1-D k-means with at most k values, and the sample CNN on
a 16-entry codebook stored in 4 bits per weight, reloading to the same outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from compressor.errors import CheckpointError
from compressor.formats.architecture import ArchitectureRef
from compressor.formats.compacted import decode_state, load_compressed, save_compressed
from compressor.stages.share.cluster import cluster_parameters, kmeans_1d, targets
from sample_models.digits_cnn.model import build
from tests.unit.sharing.helpers import load_sample

CNN = ArchitectureRef("factory", "sample_models.digits_cnn.model:build")


def test_kmeans_keeps_at_most_k_values_deterministically():
    torch.manual_seed(0)
    w = torch.randn(64, 33)
    centroids, index = kmeans_1d(w, 16)
    assert centroids.numel() == 16 and torch.all(centroids[1:] > centroids[:-1])
    assert index.shape == w.shape and int(index.max()) < 16
    again, again_index = kmeans_1d(w, 16)
    assert torch.equal(centroids, again) and torch.equal(index, again_index)
    # Each value goes to its nearest centroid, and more entries fit better.
    nearest = (w.double()[..., None] - centroids).abs().argmin(-1)
    assert torch.equal(index, nearest)
    errors = [(w.double() - c[i]).norm() for c, i in (kmeans_1d(w, k) for k in (4, 16, 64))]
    assert errors[0] > errors[1] > errors[2]
    few = torch.tensor([0.5, -1.0, 0.5, 2.0])
    values, idx = kmeans_1d(few, 16)  # already on a codebook: kept exactly
    assert torch.equal(values[idx].float(), few)
    with pytest.raises(ValueError, match="k must be"):
        kmeans_1d(w, 300)


def test_targets_skip_biases_norms_and_small_tensors():
    model = build()
    names = [n for n, _ in targets(model)]
    assert "block1.conv1.weight" in names and "fc1.weight" in names
    assert not any(n.endswith("bias") or ".bn" in n for n in names)
    assert "stem.0.weight" not in names  # 576 values: below min_numel
    assert "stem.0.weight" in [n for n, _ in targets(model, min_numel=1)]
    assert [n for n, _ in targets(model, modules=["fc1"])] == ["fc1.weight"]
    assert "fc1.weight" not in [n for n, _ in targets(model, ignore=["re:fc\\d"])]


def test_cnn_on_16_entries_is_over_4x_smaller_and_reloads_the_same(tmp_path: Path):
    model = load_sample("digits_cnn", build)
    clustered = copy.deepcopy(model)
    done = cluster_parameters(targets(clustered), 16)
    assert all(c.distinct <= 16 and c.relative_error < 0.15 for c in done)
    plain = save_compressed(
        model, tmp_path / "plain.safetensors", architecture=CNN, manifest=[], codebooks=False
    )
    saved = save_compressed(
        clustered, tmp_path / "model.safetensors", architecture=CNN, manifest=[]
    )
    assert set(saved.encoded) == {c.name for c in done}
    assert all(info["bits"] == 4 for info in saved.encoded.values())
    assert plain.size_bytes >= 4 * 461_898  # float32: 4 bytes per parameter
    assert plain.size_bytes / saved.size_bytes >= 4.0
    loaded = load_compressed(tmp_path / "model.safetensors").model
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), clustered.eval()(x))
    assert torch.equal(loaded.fc1.weight, clustered.fc1.weight)


def test_odd_sized_4_bit_tensors_round_trip_and_forged_encodings_are_refused(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(33, 33, bias=False))  # 1089 values: odd
    cluster_parameters(targets(model), 5)
    path = tmp_path / "odd.safetensors"
    arch = ArchitectureRef(
        "factory", "torch.nn:Linear", {"in_features": 33, "out_features": 33, "bias": False}
    )
    linear = model[0]
    saved = save_compressed(linear, path, architecture=arch, manifest=[])
    assert saved.encoded["weight"]["bits"] == 4
    assert torch.equal(load_compressed(path).model.weight, linear.weight)
    stored = {"w.__indices": torch.zeros(3, dtype=torch.uint8), "w.__codebook": torch.ones(2)}
    with pytest.raises(CheckpointError, match="bit"):
        decode_state(dict(stored), {"w": {"encoding": "codebook", "bits": 3}}, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        decode_state(dict(stored), {"w": {"encoding": "codebook", "bits": 4, "shape": [9]}}, path)
    with pytest.raises(CheckpointError, match="shape"):
        decode_state(dict(stored), {"w": {"encoding": "codebook", "bits": 4, "shape": "x"}}, path)
