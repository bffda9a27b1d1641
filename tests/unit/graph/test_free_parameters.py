"""Free parameters (no layer owns them) cut along their channel axis with their group, as
Torch-Pruning's unwrapped-parameter handling does: layer scale, class/distillation tokens,
position embeddings; anything else stays refused with the clear error."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.errors import StageError
from compressor.graph import StructureGraph
from tests.compat import zoo


def _prune_all(graph: StructureGraph, amount: float = 0.3) -> None:
    for group in graph.prunable():
        count = int(group.size * amount) // group.unit_size * group.unit_size
        if group.kind == "heads":
            count = int(group.size * amount)
        if count:
            graph.remove(group, range(count))


def test_convnext_layer_scale_is_pruned_with_its_channels():
    model = zoo.tiny_convnext()
    x = torch.rand(2, 3, 32, 32)
    block = model.features[1][0]
    scale_before = block.layer_scale.detach().flatten().clone()
    graph = StructureGraph(model, {"x": x})
    assert all(not g.unsupported for g in graph.groups())
    group = next(g for g in graph.prunable() if g.size == 16)  # the first stage's width
    graph.remove(group, [0, 3, 5])
    graph.verify()
    kept = [i for i in range(16) if i not in (0, 3, 5)]
    assert block.layer_scale.shape == (13, 1, 1)
    assert torch.equal(block.layer_scale.detach().flatten(), scale_before[kept])
    records = [r for r in graph.history if r["module"] == "features.1.0.layer_scale"]
    assert records and records[0]["kept"] == kept and records[0]["dim"] == "axis0"


def test_convnext_pruned_output_matches_the_same_cut_by_torch_pruning():
    import torch_pruning as tp

    x = torch.rand(1, 3, 32, 32)
    ours, theirs = zoo.tiny_convnext(), zoo.tiny_convnext()
    graph = StructureGraph(ours, {"x": x})
    group = next(g for g in graph.prunable() if g.size == 16)
    graph.remove(group, [1, 2])
    dg = tp.DependencyGraph().build_dependency(theirs, example_inputs=x)
    dg.get_pruning_group(theirs.features[0][0], tp.prune_conv_out_channels, [1, 2]).prune()
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_vit_class_distillation_tokens_and_position_embedding_follow_the_hidden_size():
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, depth=1
    ).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        shape = model(x).shape
    graph = StructureGraph(model, {"x": x}, prune_hidden=True)
    hidden = next(g for g in graph.prunable() if "hidden" in g.tags)
    graph.remove(hidden, range(0, 192, 4))  # 48 of 192 channels
    graph.verify()
    assert model.cls_token.shape == (1, 1, 144)
    assert model.dist_token.shape == (1, 1, 144)
    assert model.pos_embed.shape == (1, 6, 144)
    with torch.no_grad():
        assert model(x).shape == shape


class _Mixer(nn.Module):
    """A conv followed by a free (C, D) matrix applied with matmul: its last axis is not the
    conv's channels, so cutting it with them would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.mix = nn.Parameter(torch.randn(8, 5))
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        y = self.conv(x).mean((2, 3)) @ self.mix
        return self.head(y)


def test_free_parameter_in_another_layout_is_still_refused():
    graph = StructureGraph(_Mixer(), {"x": torch.rand(1, 3, 8, 8)})
    conv = next(g for g in graph.groups() if g.id == "conv")
    assert conv.unsupported
    with pytest.raises(StageError, match="cannot prune") as err:
        graph.remove(conv, [0])
    assert "<model>" in str(err.value)  # the model itself owns the parameter


def test_hugging_face_convnext_layer_scale_is_pruned():
    import transformers

    torch.manual_seed(0)
    config = transformers.ConvNextConfig(
        hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=10
    )
    model = transformers.ConvNextForImageClassification(config).eval()
    layer = model.convnext.encoder.stages[0].layers[0]
    nn.init.uniform_(layer.layer_scale_parameter, 0.5, 1.5)
    scale = layer.layer_scale_parameter.detach().clone()
    x = torch.rand(1, 3, 32, 32)
    graph = StructureGraph(model, {"pixel_values": x})
    group = graph.group("convnext.embeddings.patch_embeddings")
    assert group.blocked is None and not group.unsupported
    graph.remove(group, [2, 7])
    graph.verify()
    kept = [i for i in range(16) if i not in (2, 7)]
    assert torch.equal(layer.layer_scale_parameter.detach(), scale[kept])


def test_timm_vit_heads_pruned_with_its_attention_width():
    # timm's Attention reshapes its output to attn_dim (num_heads * head_dim): the attribute
    # must follow the head count, or the pruned model fails at that reshape.
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    graph = StructureGraph(model, {"x": x})
    heads = next(g for g in graph.prunable() if g.kind == "heads")
    graph.remove(heads, [1])
    graph.verify()
    attn = model.blocks[0].attn
    assert (attn.num_heads, attn.attn_dim, attn.qkv.out_features) == (2, 128, 384)
