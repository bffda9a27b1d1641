"""Channel counts stored as attributes (timm's ``Scale.shape``, ``MixedConv2d.splits``) and
per-head parameters (Swin's relative-position bias table) follow the channels and heads
removed, so these timm models prune correctly instead of being refused after the edit.

Correct means computing what the original computes once the removed units are ignored: a
copy whose consumers read zero from the removed channels (or whose output projection reads
zero from a removed head) gives the same output as the pruned model."""

from __future__ import annotations

import copy

import pytest
import torch

from compressor.errors import StageError
from compressor.formats.manifest import snapshot
from compressor.graph import StructureGraph
from compressor.graph.schedule import lowest
from tests.unit.graph.helpers import ignoring_units, rebuild

timm = pytest.importorskip("timm")


def _poolformer():
    import timm.models.metaformer as mf

    torch.manual_seed(0)
    return mf.MetaFormer(
        depths=(1, 1, 1, 1),
        dims=(16, 32, 48, 64),
        token_mixers=mf.Pooling,
        norm_layers=mf.GroupNorm1,
        mlp_act=torch.nn.GELU,
        mlp_bias=True,
        use_mlp_head=False,
        layer_scale_init_values=1e-5,
        num_classes=10,
    ).eval()


def test_poolformer_layer_scale_shape_follows_its_channels(onnx_diff):
    model, fresh = _poolformer(), _poolformer()
    x = torch.rand(1, 3, 32, 32)
    before = snapshot(model)
    graph = StructureGraph(model, {"x": x})
    scale = model.stages[0].blocks[0].layer_scale1
    assert scale.shape == (16, 1, 1)
    stream = next(g for g in graph.prunable() if g.width == 16)  # stage 0's width
    graph.remove(stream, [1, 4, 9])
    graph.verify()
    assert scale.scale.shape == (13,) and scale.shape == (13, 1, 1)
    reloaded = rebuild(fresh, model, before)  # the manifest carries the stored shape
    assert reloaded.stages[0].blocks[0].layer_scale1.shape == (13, 1, 1)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model(x), atol=1e-6)
    assert onnx_diff(model, {"x": x}) < 1e-4


def _mixnet():
    torch.manual_seed(0)
    return timm.create_model("mixnet_s", pretrained=False, num_classes=10).eval()


def test_mixnet_split_sizes_follow_each_branch_and_the_cut_is_exact():
    model, fresh = _mixnet(), _mixnet()
    x = torch.rand(1, 3, 32, 32)
    before = snapshot(model)
    graph = StructureGraph(model, {"x": x})
    mixed = model.blocks[1][0].conv_pw  # a MixedConv2d reading its input in two pieces
    assert type(mixed).__name__ == "MixedConv2d" and len(mixed.splits) == 2
    group = next(
        g
        for g in graph.prunable()
        if any(m.module is mixed["0"] and m.role == "consumer" for m in g.members)
    )
    assert group.spans, "the pieces of the split are spans that must each keep a unit"
    units = lowest(torch.arange(group.size, dtype=torch.float), group.size // 3, group.spans)
    expected = ignoring_units(model, group, units)
    graph.remove(group, units)
    graph.verify()
    assert mixed.splits == [c.in_channels for c in mixed.values()]
    assert mixed.in_channels == sum(mixed.splits) < sum(fresh.blocks[1][0].conv_pw.splits)
    with torch.no_grad():
        assert torch.allclose(model(x), expected(x), atol=1e-5)
    reloaded = rebuild(fresh, model, before)
    assert reloaded.blocks[1][0].conv_pw.splits == mixed.splits
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model(x), atol=1e-6)


def test_mixnet_concatenated_branches_into_a_split_of_other_sizes_cut_exactly():
    # conv_pw's two branches (240 + 240) are concatenated and read by a mixed depthwise
    # conv in three pieces (160 x 3), then by conv_pwl in two: every offset must be followed.
    model = _mixnet()
    x = torch.rand(1, 3, 32, 32)
    graph = StructureGraph(model, {"x": x})
    dw = model.blocks[4][0].conv_dw
    group = next(g for g in graph.prunable() if any(m.module is dw["2"] for m in g.members))
    scores = torch.rand(group.size, generator=torch.Generator().manual_seed(0))
    units = lowest(scores, group.size // 3, group.spans)
    expected = ignoring_units(model, group, units)
    graph.remove(group, units)
    graph.verify()
    assert dw.splits == [c.in_channels for c in dw.values()] and sum(dw.splits) < 480
    assert model.blocks[4][0].conv_pwl.splits == [
        c.in_channels for c in model.blocks[4][0].conv_pwl.values()
    ]
    with torch.no_grad():
        assert torch.allclose(model(x), expected(x), atol=1e-5)


def test_a_split_piece_is_never_emptied():
    model = _mixnet()
    graph = StructureGraph(model, {"x": torch.rand(1, 3, 32, 32)})
    group = next(g for g in graph.prunable() if g.spans)
    first = sorted(group.spans[0])
    # The lowest scores sit in one piece: the choice keeps that piece's best unit.
    scores = torch.ones(group.size)
    scores[first] = 0
    chosen = lowest(scores, len(first), group.spans)
    assert len(chosen) == len(first) and not set(first) <= set(chosen)
    with pytest.raises(StageError, match="no channels"):
        graph.remove(group, first)


def _swin():
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        depths=(2, 2),
        num_heads=(2, 4),
        embed_dim=32,
        img_size=56,
        window_size=7,
        num_classes=10,
    ).eval()


def test_swin_relative_position_bias_table_loses_the_removed_heads(onnx_diff):
    model, fresh = _swin(), _swin()
    x = torch.rand(1, 3, 56, 56)
    before = snapshot(model)
    graph = StructureGraph(model, {"x": x})
    name = "layers.1.blocks.1.attn"  # shifted windows, 4 heads of 16
    group = graph.group(name)
    assert group.kind == "heads" and group.size == 4 and not group.unsupported
    attn = model.get_submodule(name)
    table = attn.relative_position_bias_table.detach().clone()
    expected = copy.deepcopy(model).eval()
    with torch.no_grad():  # the original, with the output projection ignoring head 2
        expected.get_submodule(name).proj.weight[:, 32:48] = 0
    graph.remove(group, [2])
    graph.verify()
    assert attn.num_heads == 3
    assert torch.equal(attn.relative_position_bias_table, table[:, [0, 1, 3]])
    with torch.no_grad():
        assert torch.allclose(model(x), expected(x), atol=1e-5)
    reloaded = rebuild(fresh, model, before)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model(x), atol=1e-6)
    assert onnx_diff(model, {"x": x}) < 1e-4
