"""Architectures the engine cannot follow are refused before any edit, with the reason."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import StageError
from compressor.graph import StructureGraph


def test_shufflenet_channel_shuffle_is_refused_clearly():
    from torchvision.models import shufflenet_v2_x0_5

    torch.manual_seed(0)
    model = shufflenet_v2_x0_5(num_classes=10).eval()  # 0.35M parameters
    before = {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(StageError, match="channel shuffle") as err:
        StructureGraph(model, {"x": torch.rand(1, 3, 32, 32)})
    assert "ShuffleNetV2" in str(err.value) and "distil" in err.value.hint
    assert {k: v.shape for k, v in model.state_dict().items()} == before  # nothing edited


def test_torchvision_swin_window_attention_blocks_its_stream_but_prunes_its_mlps():
    # torchvision's Swin runs qkv as F.linear on the module's weight and moves channels
    # across windows; the residual stream's group fans out past the analysis budget. It is
    # blocked (named, with the reason) and the analysis goes on: the MLP widths prune, and
    # the result is exactly the original with the removed units ignored.
    import copy

    from torchvision.models.swin_transformer import SwinTransformer

    from tests.unit.graph.helpers import ignoring_units

    def swin():
        torch.manual_seed(0)
        return SwinTransformer(
            patch_size=[4, 4],
            embed_dim=16,
            depths=[1, 1],
            num_heads=[1, 2],
            window_size=[2, 2],
            num_classes=10,
        ).eval()

    model = swin()
    x = torch.rand(1, 3, 32, 32)
    graph = StructureGraph(model, {"x": x})
    fanned = [g for g in graph.groups() if g.blocked and "fan out" in g.blocked]
    assert [g.id for g in fanned] == ["features.3.0.mlp.3"] and "window" in fanned[0].blocked
    mlps = [g for g in graph.prunable()]
    assert sorted(g.id for g in mlps) == ["features.1.0.mlp.0", "features.3.0.mlp.0"]
    for group in mlps:
        units = list(range(0, group.size, 3))
        expected = ignoring_units(model, group, units)
        graph.remove(group, units)
        graph.verify()
        with torch.no_grad():
            assert torch.allclose(model(x), expected(x), atol=1e-5)
    assert copy.deepcopy(model)(x).shape == (1, 10)


@pytest.mark.slow  # its window attention fans out 4 times before the budget stops it
def test_maxvit_attention_is_recognised_so_its_stream_is_kept_and_the_rest_prunes():
    # MaxViT's attention packs q/k/v in `to_qkv` and reshapes its output to the input's
    # width: the stream must stay (the hidden size); MBConv and MLP widths prune.
    from torchvision.models.maxvit import MaxVit

    from tests.unit.graph.helpers import ignoring_units

    torch.manual_seed(0)
    model = MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[16, 32],
        block_layers=[1, 1],
        head_dim=8,
        stochastic_depth_prob=0.0,
        num_classes=10,
    ).eval()
    x = torch.rand(1, 3, 32, 32)
    graph = StructureGraph(model, {"x": x})
    prunable = graph.prunable()
    assert prunable and not any("hidden" in g.tags for g in prunable)
    assert any("hidden" in g.tags for g in graph.groups())
    # Two groups (each removal re-describes the graph): an MBConv width and an MLP width.
    chosen = [g for g in prunable if g.kind == "channels" and not g.spans]
    mbconv = next(g for g in chosen if "MBconv.layers.conv_a" in g.id)
    mlp = next(g for g in chosen if "mlp_layer" in g.id)
    for group in (mbconv, graph.group(mlp.id)):
        units = list(range(0, group.size, 4))
        expected = ignoring_units(model, group, units)
        graph.remove(group, units)
        graph.verify()
        with torch.no_grad():
            assert torch.allclose(model(x), expected(x), atol=1e-4), group.id


@pytest.mark.parametrize("name", ["resmlp_12_224", "mixer_s16_224"])
def test_token_mixing_layers_block_the_stream_with_the_reason(name):
    # A Linear applied to the transposed stream (token mixing) reads the stream's channels
    # along the token axis; Torch-Pruning maps them past its width (an IndexError used to
    # escape as an internal error). The stream is blocked, the channel MLPs prune exactly.
    timm = pytest.importorskip("timm")
    from tests.unit.graph.helpers import ignoring_units

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=32, num_classes=10).eval()
    x = torch.rand(1, 3, 32, 32)
    graph = StructureGraph(model, {"x": x})
    stream = graph.group("stem.proj")
    assert stream.blocked and "another axis" in stream.blocked and "token" in stream.blocked
    group = graph.group("blocks.0.mlp_channels.fc1")
    units = list(range(0, group.size, 5))
    expected = ignoring_units(model, group, units)
    graph.remove(group, units)
    graph.verify()
    with torch.no_grad():
        assert torch.allclose(model(x), expected(x), atol=1e-5)


def test_extra_per_output_parameters_of_a_layer_follow_its_channels():
    # timm's ScaledStdConv2d (NF-Nets) holds a gain per output channel besides its weight.
    pytest.importorskip("timm")
    from timm.layers import ScaledStdConv2d

    from tests.unit.graph.helpers import ignoring_units

    torch.manual_seed(0)
    # The consumer is a plain conv: a standardised one would re-standardise its fan-in.
    model = torch.nn.Sequential(
        ScaledStdConv2d(3, 12, 3), torch.nn.ReLU(), torch.nn.Conv2d(12, 4, 3)
    )
    model.eval()
    torch.nn.init.uniform_(model[0].gain, 0.5, 1.5)
    gain = model[0].gain.detach().flatten().clone()
    x = torch.rand(1, 3, 16, 16)
    graph = StructureGraph(model, {"input": x})
    group = graph.group("0")
    expected = ignoring_units(model, group, [1, 5, 6])
    graph.remove(group, [1, 5, 6])
    graph.verify()
    kept = [i for i in range(12) if i not in (1, 5, 6)]
    assert model[0].gain.shape == (9, 1, 1, 1)
    assert torch.equal(model[0].gain.detach().flatten(), gain[kept])
    with torch.no_grad():
        assert torch.allclose(model(x), expected(x), atol=1e-5)


class _StoredHeads(torch.nn.Module):
    """fc1's output is reshaped by a stored head count: removing its units breaks the
    forward (as LeViT's, XCiT's and PVT-v2's attention do); the other groups are fine."""

    def __init__(self):
        super().__init__()
        self.heads = 3
        self.fc1, self.fc2 = torch.nn.Linear(8, 12), torch.nn.Linear(12, 8)
        self.fc3, self.fc4 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)

    def forward(self, x):
        y = self.fc2(self.fc1(x).view(x.shape[0], self.heads, 4).flatten(1))
        return self.fc4(torch.relu(self.fc3(y)))


def test_groups_whose_removal_breaks_the_forward_are_found_on_meta_copies():
    from compressor.graph.probe import breaking_removals

    torch.manual_seed(0)
    model = _StoredHeads()
    x = torch.rand(2, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    removals = {"fc1": [0, 1, 2], "fc2": [0], "fc3": [0, 1]}
    broken = breaking_removals(model, {"x": x}, removals)
    assert list(broken) == ["fc1"] and "no longer runs" in broken["fc1"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # The other two are removed for real, and the model runs.
    graph = StructureGraph(model, {"x": x})
    for group_id in ("fc2", "fc3"):
        graph.remove(graph.group(group_id), removals[group_id])
    graph.verify()
    assert model.fc3.out_features == 14 and model.fc2.out_features == 7
