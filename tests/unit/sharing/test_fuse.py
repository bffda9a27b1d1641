"""fuse-layers on the sample text transformer: one shared Parameter per pair, trained
jointly, stored once (the file shrinks by the tied tensors' bytes), tied again on load, one
ONNX initializer with either exporter; and the layer similarity measures."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch

from compressor.counting import count_params
from compressor.formats.architecture import ArchitectureRef
from compressor.formats.compacted import load_compressed, save_compressed
from compressor.formats.onnx.export import export_onnx
from compressor.spec.sections import OnnxSpec
from compressor.stages.share import fuse
from compressor.stages.share.similarity import MEASURES, similarity
from sample_models.text_transformer.model import build
from tests.unit.sharing.helpers import load_sample

TEXT = ArchitectureRef("factory", "sample_models.text_transformer.model:build")
FFN = [r"re:blocks\.\d+\.ffn_(in|out)"]


@pytest.fixture(scope="module")
def text_model():
    return load_sample("text_transformer", build)


def fused(model, **options):
    model = copy.deepcopy(model)
    buckets = fuse.candidates(model, modules=FFN)
    pairs = fuse.choose_pairs(model, buckets, measure="cosine", count=2)
    fuse.tie(model, pairs, **options)
    return model, pairs


def ids(n: int = 4) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(1, 4000, (n, 64))


def test_measures_are_one_for_equal_tensors_and_see_what_they_claim():
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    for measure in MEASURES:
        assert similarity(measure, a, a.clone()) == pytest.approx(1.0)
    assert similarity("cosine", a, -a) == pytest.approx(-1.0)
    shuffled = a.flatten()[torch.randperm(a.numel())].reshape(a.shape)
    assert similarity("wasserstein", a, shuffled) == pytest.approx(1.0)  # same distribution
    assert similarity("cosine", a, shuffled) < 0.5  # different positions
    assert similarity("cka", a, 3 * a) == pytest.approx(1.0)  # scale-invariant
    assert 0 <= similarity("covariance", a, torch.randn(16, 8)) < 1
    with pytest.raises(ValueError, match="shapes"):
        similarity("cosine", a, torch.randn(8, 16))


def test_candidates_group_equal_layers_and_pairs_are_disjoint(text_model):
    buckets = fuse.candidates(text_model)
    assert {len(v) for v in buckets.values()} == {8, 2}  # 8 attention projections; FFN pairs
    pairs = fuse.choose_pairs(text_model, buckets, measure="cka", count=6)
    names = [n for p in pairs for n in (p.kept, p.tied)]
    assert len(names) == len(set(names)) == 12
    assert [p.similarity for p in pairs] == sorted((p.similarity for p in pairs), reverse=True)
    assert fuse.candidates(text_model, ignore=["blocks.1"], min_params=40_000) == {}


def test_tied_layers_share_one_parameter_trained_jointly(text_model):
    model, pairs = fused(text_model)
    assert [(p.kept, p.tied) for p in pairs] == [
        ("blocks.0.ffn_in", "blocks.1.ffn_in"),
        ("blocks.0.ffn_out", "blocks.1.ffn_out"),
    ]
    b0, b1 = model.blocks
    assert b1.ffn_in.weight is b0.ffn_in.weight and b1.ffn_in.bias is b0.ffn_in.bias
    expected = (text_model.blocks[0].ffn_in.weight + text_model.blocks[1].ffn_in.weight) / 2
    assert torch.allclose(b0.ffn_in.weight, expected)
    assert count_params(text_model) - count_params(model) == sum(p.params for p in pairs)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(ids()).sum().backward()
    optimizer.step()
    assert b1.ffn_out.weight is b0.ffn_out.weight  # still one tensor after a step
    first, _ = fused(text_model, mode="first")
    assert torch.equal(first.blocks[1].ffn_in.weight, text_model.blocks[0].ffn_in.weight)


def test_file_shrinks_by_the_tied_bytes_and_reloads_tied(text_model, tmp_path):
    model, pairs = fused(text_model)
    plain = save_compressed(
        text_model, tmp_path / "orig.safetensors", architecture=TEXT, manifest=[]
    )
    saved = save_compressed(model, tmp_path / "fused.safetensors", architecture=TEXT, manifest=[])
    tied_bytes = 4 * sum(p.params for p in pairs)
    assert set(saved.aliases) == {
        f"blocks.1.{n}.{a}" for n in ("ffn_in", "ffn_out") for a in ("weight", "bias")
    }
    # Only the metadata (the alias list) differs besides the tensors.
    assert abs((plain.size_bytes - saved.size_bytes) - tied_bytes) < 512
    loaded = load_compressed(tmp_path / "fused.safetensors").model
    assert loaded.blocks[1].ffn_in.weight is loaded.blocks[0].ffn_in.weight
    with torch.no_grad():
        assert torch.equal(loaded(ids()), model.eval()(ids()))


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_onnx_has_one_initializer_per_tied_tensor(text_model, tmp_path, exporter):
    model, _ = fused(text_model)
    spec = OnnxSpec(exporter=exporter, opset=18 if exporter == "dynamo" else 17)
    path = tmp_path / "fused.onnx"
    info = export_onnx(model, {"input_ids": ids(5)}, path, spec)
    assert info["exporter"] == exporter
    assert max(info["verification"]["max_abs_diff"].values()) < 1e-4
    graph = onnx.load(str(path)).graph
    ffn_sized = [i for i in graph.initializer if list(i.dims) in ([512, 128], [128, 512])]
    assert len(ffn_sized) == 2  # four FFN weights, two of them tied to the other two
    # The untied float32 weights alone would not fit (exporters add a little on top).
    assert path.stat().st_size < 4 * count_params(text_model)
