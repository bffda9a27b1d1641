"""The engine on what transformers models add: GPT-2's transposed ``Conv1D`` layers, its packed
query/key/value projection split along a positive axis, and its key/value cache."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from compressor.formats.hf.model import HFModel
from compressor.graph import FFN, HEADS, HIDDEN, StructureGraph
from compressor.graph.importance import magnitude
from compressor.graph.layers import TransposedLinearPruner, is_transposed_linear
from tests.unit.hf.helpers import SEQ, VOCAB, tiny_model

transformers = pytest.importorskip("transformers")
Conv1D = transformers.pytorch_utils.Conv1D


def text_inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def gpt2() -> HFModel:
    return HFModel(tiny_model("gpt2"), "base").eval()


def test_conv1d_is_recognised_by_shape_and_edited_on_the_right_axes():
    layer = Conv1D(6, 4)  # nf=6 outputs, nx=4 inputs, weight (4, 6)
    assert is_transposed_linear(layer)
    assert not is_transposed_linear(nn.Linear(4, 6))

    class Conv1D_(nn.Module):  # a look-alike whose weight has the Linear layout
        def __init__(self):
            super().__init__()
            self.nf, self.nx, self.weight = 6, 4, nn.Parameter(torch.zeros(6, 4))

    Conv1D_.__name__ = "Conv1D"
    assert not is_transposed_linear(Conv1D_())
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    x = torch.randn(3, 4)
    pruner = TransposedLinearPruner()
    pruner.prune_out_channels(layer, [1, 4])
    assert (layer.nf, tuple(layer.weight.shape), tuple(layer.bias.shape)) == (4, (4, 4), (4,))
    assert torch.allclose(layer(x), (x @ weight + bias)[:, [0, 2, 3, 5]])
    pruner.prune_in_channels(layer, [0])
    assert (layer.nx, tuple(layer.weight.shape)) == (3, (3, 4))
    want = x[:, 1:] @ weight[1:][:, [0, 2, 3, 5]] + bias[[0, 2, 3, 5]]
    assert torch.allclose(layer(x[:, 1:]), want)


def test_gpt2_groups_are_heads_and_ffn_and_the_hidden_size_is_protected():
    model = gpt2()
    graph = StructureGraph(model, text_inputs())
    kinds = {g.id: (g.kind, g.tags, g.blocked) for g in graph.groups()}
    assert kinds["model.h.0.attn"][0] == HEADS and kinds["model.h.0.attn"][2] is None
    assert kinds["model.h.1.mlp.c_fc"] == ("channels", frozenset({FFN}), None)
    assert HIDDEN in kinds["model.wte"][1] and kinds["model.wte"][2] is not None
    heads = graph.group("model.h.0.attn")
    assert (heads.size, heads.interleave, heads.unit_size) == (4, 3, 8)
    ffn = graph.group("model.h.0.mlp.c_fc")
    c_fc = next(m for m in ffn.producers() if m.name.endswith("c_fc"))
    assert c_fc.entries("weight").shape == (64, 32)  # one row per unit: the weight's columns
    with torch.no_grad():  # unit 5 reads and writes nothing: its Conv1D column and row are 0
        model.model.h[0].mlp.c_fc.weight[:, 5] = 0
        model.model.h[0].mlp.c_fc.bias[5] = 0
        model.model.h[0].mlp.c_proj.weight[5, :] = 0
    scores = magnitude(ffn)
    assert scores.shape == (64,) and int(scores.argmin()) == 5 and float(scores[5]) == 0
    assert model.model.config.use_cache is True  # switched off only while tracing


def test_gpt2_head_removal_equals_silencing_those_heads():
    model = gpt2()
    inputs = text_inputs()
    ref = copy.deepcopy(model)
    attn = model.model.h[0].attn
    qkv = attn.c_attn.weight.detach().clone()
    with torch.no_grad():  # heads 1 and 3: inner rows 8-15 and 24-31 of c_proj (in, out)
        ref.model.h[0].attn.c_proj.weight[[*range(8, 16), *range(24, 32)], :] = 0
    graph = StructureGraph(model, inputs)
    graph.remove(graph.group("model.h.0.attn"), [1, 3])
    graph.verify()
    with torch.no_grad():
        assert torch.equal(model(**inputs), ref(**inputs))
    kept = [*range(0, 8), *range(16, 24)]  # heads 0 and 2, in each of query, key and value
    columns = [third * 32 + c for third in range(3) for c in kept]
    assert torch.equal(attn.c_attn.weight, qkv[:, columns])
    assert (attn.num_heads, attn.head_dim, attn.split_size, attn.embed_dim) == (2, 8, 16, 32)
    assert model.model.h[1].attn.num_heads == 4  # only the layer asked


class SplitAttention(nn.Module):
    """Packed qkv split with a positive axis (``dim=2``), as GPT-2 does, without transformers."""

    def __init__(self, dim: int = 16, num_heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim, self.split_size = num_heads, dim // num_heads, dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).split(self.split_size, dim=2)
        q, k, v = (t.view(b, n, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        attn = (q @ k.transpose(-1, -2) * self.head_dim**-0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


def test_split_along_a_positive_last_axis_removes_the_same_head_from_each_third():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), SplitAttention(), nn.Linear(16, 2))
    inputs = {"input": torch.randn(2, 6, 5)}
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref[1].proj.weight[:, 4:8] = 0  # head 1 silenced
    graph = StructureGraph(model, inputs)
    heads = graph.group("1")
    assert (heads.kind, heads.interleave, heads.unit_size) == (HEADS, 3, 4)
    graph.remove(heads, [1])
    graph.verify()
    assert (model[1].num_heads, model[1].split_size, model[1].qkv.out_features) == (3, 12, 36)
    with torch.no_grad():
        assert torch.allclose(model(**inputs), ref(**inputs), atol=1e-6)
