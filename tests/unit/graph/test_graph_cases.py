"""One tiny model per coupling case: exact widths after removing units, unchanged output
shapes, the function a removal must compute (where it is exact), and an ONNX export that
matches torch within 1e-4."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.formats.manifest import snapshot
from compressor.graph import HEADS, StructureGraph
from compressor.rebuildable import HeadPrunedMHA
from tests.unit.graph.helpers import rebuild, zero_columns

IMAGES = {"x": torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))}


def prune(model: nn.Module, inputs, removals: dict[str, list[int]], **options) -> StructureGraph:
    """Remove the given units of each group (by id), check the outputs kept their shapes."""
    model.eval()
    with torch.no_grad():
        before = [t.shape for t in _outputs(model, inputs)]
    graph = StructureGraph(model, inputs, **options)
    groups = {g.id: g for g in graph.groups()}
    for gid, units in removals.items():
        graph.remove(groups[gid], units)
    graph.verify()
    with torch.no_grad():
        assert [t.shape for t in _outputs(model, inputs)] == before
    return graph


def _outputs(model, inputs):
    out = model(**inputs)
    return list(out) if isinstance(out, tuple) else [out]


def _close(a: nn.Module, b: nn.Module, inputs, atol=1e-5) -> bool:
    with torch.no_grad():
        return torch.allclose(a(**inputs), b(**inputs), atol=atol)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = self.bn0(self.stem(x))
        h = F.relu(h + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h))))))
        return self.fc(h.mean((2, 3)))


def test_residual_addition_couples_both_branches(onnx_diff):
    model = Residual()
    graph = prune(model, IMAGES, {"stem": [0, 3, 7], "conv1": [1]})
    assert (
        model.stem.out_channels,
        model.bn0.num_features,
        model.conv2.out_channels,
        model.bn2.num_features,
        model.conv1.in_channels,
        model.fc.in_features,
    ) == (5,) * 6
    assert model.conv1.out_channels == model.conv2.in_channels == model.bn1.num_features == 7
    assert model.bn0.running_mean.shape == (5,)
    edits = {(r["module"], r["dim"]) for r in graph.history if r["group"] == "stem"}
    assert edits == {
        ("stem", "out"),
        ("bn0", "out"),
        ("conv1", "in"),
        ("conv2", "out"),
        ("bn2", "out"),
        ("fc", "in"),
    }
    assert onnx_diff(model, IMAGES) < 1e-4


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        return self.fc(F.relu(self.c(h)).mean((2, 3)))


def test_concatenation_maps_each_branch_to_its_offset(onnx_diff):
    model = Concat().eval()
    # Units 1 of a and 0, 4 of b are concatenated channels 1, 4 and 8 of c's input.
    ref = zero_columns(model, "c", [1, 4, 8])
    prune(model, IMAGES, {"a": [1], "b": [0, 4]})
    assert (model.a.out_channels, model.b.out_channels, model.c.in_channels) == (3, 4, 7)
    assert model.c.weight.shape == (5, 7, 3, 3)
    assert _close(model, ref, IMAGES)
    assert onnx_diff(model, IMAGES) < 1e-4


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = F.relu(self.dw(F.relu(self.bn(self.conv(x)))))
        return self.fc(F.relu(self.pw(h)).mean((2, 3)))


def test_depthwise_conv_shrinks_with_its_input(onnx_diff):
    model = Depthwise().eval()
    ref = zero_columns(model, "pw", [0, 2, 5])
    prune(model, IMAGES, {"conv": [0, 2, 5]})
    dw = model.dw
    assert (dw.in_channels, dw.out_channels, dw.groups, model.bn.num_features) == (5, 5, 5, 5)
    assert dw.weight.shape == (5, 1, 3, 3) and model.pw.in_channels == 5
    assert _close(model, ref, IMAGES)
    assert onnx_diff(model, IMAGES) < 1e-4


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gconv = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.head = nn.Conv2d(12, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.gconv(F.relu(self.conv(x))))
        return self.fc(self.head(h).mean((2, 3)))


def test_grouped_conv_keeps_every_group_the_same_width(onnx_diff):
    model = Grouped().eval()
    graph = StructureGraph(model, IMAGES)
    feeding, own = graph.group("conv"), graph.group("gconv")
    # 8 inputs in 4 groups: a unit is one position in every group (4 channels), 2 units.
    assert (feeding.interleave, feeding.size) == (4, 2)
    assert (own.interleave, own.size) == (4, 3)
    assert feeding.channels([1]) == [1, 3, 5, 7]
    # Unit 1 of gconv's outputs is channel 1 of each group of 3: 1, 4, 7, 10.
    ref = zero_columns(model, "head", own.channels([1]))
    graph.remove(own, [1])
    graph.verify()
    assert _close(model, ref, IMAGES)
    graph = prune(model, IMAGES, {"conv": [0]})
    g = model.gconv
    assert (model.conv.out_channels, g.in_channels, g.out_channels, g.groups) == (4, 4, 8, 4)
    assert g.weight.shape == (8, 1, 3, 3) and model.head.in_channels == 8
    assert onnx_diff(model, IMAGES) < 1e-4


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 4, 3, padding=1)
        self.gn_conv = nn.Conv2d(4, 16, 1)
        self.gn = nn.GroupNorm(4, 16)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.bn(self.conv1(x)))))
        return self.fc(F.relu(self.gn(self.gn_conv(h))).mean((2, 3)))


def test_batch_norm_and_group_norm_follow_their_channels(onnx_diff):
    model = ConvBN().eval()
    with torch.no_grad():  # distinct statistics, so a wrong slice would show
        model.bn.running_mean.copy_(torch.arange(16.0))
        model.bn.running_var.uniform_(0.5, 2.0)
    ref = zero_columns(model, "conv2", [3, 9])
    graph = StructureGraph(model, IMAGES)
    assert graph.group("gn_conv").interleave == 4  # group norm: every group keeps its size
    graph.remove(graph.group("conv1"), [3, 9])
    graph.remove(graph.group("gn_conv"), [0, 2])  # channels 0, 2, 4, 6, 8, ... 14
    graph.verify()
    assert model.bn.num_features == 14 and model.bn.weight.shape == (14,)
    kept = [i for i in range(16) if i not in (3, 9)]
    assert model.bn.running_mean.tolist() == [float(i) for i in kept]
    assert (model.gn.num_channels, model.gn.num_groups, model.fc.in_features) == (8, 4, 8)
    ref.gn_conv, ref.gn, ref.fc = model.gn_conv, model.gn, model.fc
    assert _close(model, ref, IMAGES)
    assert onnx_diff(model, IMAGES) < 1e-4


class Norm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(F.gelu(self.norm(self.fc1(x))))


def test_layer_norm_and_flatten_into_linear(onnx_diff):
    model = Norm()
    inputs = {"x": torch.randn(4, 6)}
    prune(model, inputs, {"fc1": list(range(0, 16, 3))})
    assert model.norm.normalized_shape == (10,) and model.norm.weight.shape == (10,)
    assert model.fc1.out_features == model.fc2.in_features == 10
    assert onnx_diff(model, inputs) < 1e-4

    conv = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(216, 3))
    ref = zero_columns(conv, "3", [c * 36 + p for c in (1, 4) for p in range(36)])
    prune(conv, {"input": IMAGES["x"]}, {"0": [1, 4]})
    assert conv[3].in_features == 4 * 36
    assert _close(conv, ref, {"input": IMAGES["x"]})
    assert onnx_diff(conv, {"input": IMAGES["x"]}) < 1e-4


class MHABlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.ffn_in = nn.Linear(16, 32)
        self.ffn_out = nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        h = h + self.ffn_out(F.relu(self.ffn_in(h)))
        return self.head(h.mean(1))


def test_multihead_attention_loses_whole_heads_and_keeps_its_width(onnx_diff):
    torch.manual_seed(0)
    model = MHABlock().eval()
    inputs = {"x": torch.randn(2, 7, 5)}
    before = snapshot(model)
    ref = MHABlock().eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():  # heads 1 and 3 are inner channels 4-7 and 12-15
        ref.attn.out_proj.weight[:, [*range(4, 8), *range(12, 16)]] = 0
    graph = StructureGraph(model, inputs)
    heads = graph.group("attn")
    assert (heads.kind, heads.size, heads.unit_size) == (HEADS, 4, 4)
    assert "ffn" in graph.group("ffn_in").tags
    assert graph.group("embed").blocked  # the hidden size
    graph.remove(heads, [1, 3])
    graph.verify()
    attn = model.attn
    assert isinstance(attn, HeadPrunedMHA)
    assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (2, 4, 16)
    assert attn.query.out_features == attn.value.out_features == attn.out_proj.in_features == 8
    assert attn.out_proj.out_features == 16
    assert _close(model, ref, inputs)
    assert onnx_diff(model, inputs) < 1e-4
    # The structure manifest rebuilds it without pickle.
    fresh = rebuild(MHABlock(), model, before)
    assert isinstance(fresh.attn, HeadPrunedMHA) and fresh.attn.num_heads == 2
    assert _close(fresh, model, inputs, atol=0)


class SwiGLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(8, 16)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.proj = nn.Linear(8, 24)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        h = x + self.down(F.silu(self.gate(x)) * self.up(x))
        a, b = self.proj(h).chunk(2, dim=-1)  # the other GLU form: one projection, split
        return self.out(a * F.gelu(b))


def test_glu_pairs_lose_the_same_units(onnx_diff):
    model = SwiGLU().eval()
    inputs = {"x": torch.randn(3, 8)}
    ref = zero_columns(zero_columns(model, "down", [0, 5, 6]), "out", [2, 7])
    graph = StructureGraph(model, inputs)
    chunked = graph.group("proj")
    assert (chunked.interleave, chunked.size) == (2, 12)
    assert chunked.channels([2]) == [2, 14]
    prune(model, inputs, {"gate": [0, 5, 6], "proj": [2, 7]})
    assert model.gate.out_features == model.up.out_features == model.down.in_features == 13
    assert model.proj.out_features == 20 and model.out.in_features == 10
    assert _close(model, ref, inputs)
    assert onnx_diff(model, inputs) < 1e-4


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.ffn_in = nn.Linear(8, 16)
        self.ffn_out = nn.Linear(16, 8)
        self.lm_head = nn.Linear(8, 20, bias=False)
        self.lm_head.weight = self.emb.weight

    def forward(self, input_ids):
        h = self.emb(input_ids)
        return self.lm_head(h + self.ffn_out(F.relu(self.ffn_in(h))))


def test_tied_embedding_and_output_layer(onnx_diff):
    model = TiedLM().eval()
    inputs = {"input_ids": torch.randint(0, 20, (2, 5))}
    graph = StructureGraph(model, inputs)
    assert "hidden size" in graph.group("emb").blocked
    assert "output" in graph.group("lm_head").blocked
    ref = zero_columns(model, "ffn_out", range(6))
    prune(model, inputs, {"ffn_in": list(range(6))})
    assert model.ffn_in.out_features == model.ffn_out.in_features == 10
    assert model.lm_head.weight is model.emb.weight and model.emb.weight.shape == (20, 8)
    assert _close(model, ref, inputs)
    # Asked explicitly, the hidden size goes too: both users of the tied weight, still tied,
    # and the output (the vocabulary) keeps its width.
    prune(model, inputs, {"emb": [1, 6]}, prune_hidden=True)
    assert model.emb.embedding_dim == model.lm_head.in_features == model.ffn_in.in_features == 6
    assert model.lm_head.weight is model.emb.weight and model.emb.weight.shape == (20, 6)
    assert [n for n, _ in model.named_parameters()].count("lm_head.weight") == 0  # stored once
    assert onnx_diff(model, inputs) < 1e-4
