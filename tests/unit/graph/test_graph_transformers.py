"""Transformers: whole heads removed and every head attribute kept true (Hugging Face BERT,
the sample text transformer, a packed-qkv ViT block), the hidden size untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from compressor.graph import FFN, HEADS, StructureGraph
from compressor.rebuildable import HeadPrunedMHA
from sample_models.text_transformer.model import build as build_text

transformers = pytest.importorskip("transformers")


def tiny_bert(attn: str = "eager") -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def bert_inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def halve_heads_and_ffn(model: nn.Module, inputs) -> StructureGraph:
    graph = StructureGraph(model, inputs)
    groups = graph.prunable()
    for g in groups:
        assert g.kind == HEADS or FFN in g.tags, g.id  # nothing else is prunable in BERT
        graph.remove(g, range(0, g.size, 2))  # every other unit
    graph.verify()
    return graph


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bert_loses_half_its_heads_and_ffn_width(attn, onnx_diff):
    model = tiny_bert(attn)
    inputs = bert_inputs()
    with torch.no_grad():
        before = model(**inputs)
    graph = halve_heads_and_ffn(model, inputs)
    assert len(graph.history) > 0
    for layer in model.encoder.layer:
        sa = layer.attention.self
        assert (sa.num_attention_heads, sa.attention_head_size, sa.all_head_size) == (2, 16, 32)
        assert sa.query.out_features == sa.key.out_features == sa.value.out_features == 32
        assert sa.query.in_features == 64  # hidden size kept
        assert layer.attention.output.dense.in_features == 32
        assert layer.attention.output.dense.out_features == 64
        assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 64
    assert model.embeddings.word_embeddings.embedding_dim == 64
    with torch.no_grad():
        after = model(**inputs)
    assert after.last_hidden_state.shape == before.last_hidden_state.shape == (2, 10, 64)
    assert after.pooler_output.shape == before.pooler_output.shape
    assert onnx_diff(model, inputs) < 1e-4


def test_bert_head_removal_equals_silencing_those_heads():
    model = tiny_bert()
    inputs = bert_inputs()
    ref = copy.deepcopy(model)
    with torch.no_grad():  # heads 0 and 2 of layer 0: inner channels 0-15 and 32-47
        ref.encoder.layer[0].attention.output.dense.weight[:, [*range(16), *range(32, 48)]] = 0
    graph = StructureGraph(model, inputs)
    graph.remove(graph.group("encoder.layer.0.attention.self"), [0, 2])
    with torch.no_grad():
        got, want = model(**inputs).last_hidden_state, ref(**inputs).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)
    assert model.encoder.layer[1].attention.self.num_attention_heads == 4  # only layer 0


def test_sample_text_transformer_heads_and_ffn(onnx_diff):
    model = build_text(vocab_size=60, classes=3, dim=32, depth=2, num_heads=4, ffn=64, max_len=12)
    model.eval()
    inputs = {"input_ids": torch.randint(1, 60, (3, 12))}
    inputs["input_ids"][0, 8:] = 0  # padding
    graph = halve_heads_and_ffn(model, inputs)
    assert {g.id for g in graph.groups() if g.kind == HEADS} == {"blocks.0.attn", "blocks.1.attn"}
    for block in model.blocks:
        assert (block.attn.num_heads, block.attn.head_dim) == (2, 8)
        assert block.attn.query.out_features == block.attn.out.in_features == 16
        assert block.ffn_in.out_features == 32 and block.norm1.normalized_shape == (32,)
    assert model(**inputs).shape == (3, 3)
    assert onnx_diff(model, inputs) < 1e-4


class PackedAttention(nn.Module):
    """timm-style attention: one qkv projection split into query, key and value."""

    def __init__(self, dim: int = 16, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(b, n, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        attn = (q @ k.transpose(-1, -2) * self.head_dim**-0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


def test_packed_qkv_projection_loses_the_same_head_in_q_k_and_v(onnx_diff):
    model = nn.Sequential()
    model.embed, model.attn, model.head = nn.Linear(5, 16), PackedAttention(), nn.Linear(16, 2)
    model.forward = lambda x: model.head(model.attn(model.embed(x)).mean(1))
    inputs = {"x": torch.randn(2, 6, 5)}
    graph = StructureGraph(model, inputs)
    heads = graph.group("attn")
    assert (heads.kind, heads.size, heads.interleave, heads.unit_size) == (HEADS, 4, 3, 4)
    assert heads.channels([1]) == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]
    graph.remove(heads, [1])
    graph.verify()
    assert model.attn.num_heads == 3 and model.attn.qkv.out_features == 36
    assert model.attn.proj.in_features == 12
    assert onnx_diff(model, inputs) < 1e-4


def test_head_pruned_mha_computes_what_torch_computes():
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        new = HeadPrunedMHA.from_mha(mha).eval()
        x = torch.randn(3, 5, 16)
        pad = torch.zeros(3 if batch_first else 5, 5 if batch_first else 3, dtype=torch.bool)
        pad[0, -2:] = True
        causal = torch.ones(
            x.shape[1 if batch_first else 0], x.shape[1 if batch_first else 0], dtype=torch.bool
        ).triu(1)
        for kwargs in (
            {},
            {"key_padding_mask": pad},
            {"attn_mask": causal},
            {"attn_mask": causal.float() * -1e4, "average_attn_weights": False},
        ):
            want, want_w = mha(x, x, x, **kwargs)
            got, got_w = new(x, x, x, **kwargs)
            assert torch.allclose(got, want, atol=1e-5)
            assert torch.allclose(got_w, want_w, atol=1e-5)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    want = layer(x)
    layer.self_attn = HeadPrunedMHA.from_mha(layer.self_attn)
    assert torch.allclose(layer(x), want, atol=1e-5)  # the fused fast path steps aside


class EncoderStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(32, 3)

    def forward(self, ids, pad):
        h = self.enc(self.emb(ids), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).float()  # torch's fused path zeroes padded positions
        return self.head((h * keep).sum(1) / keep.sum(1))


def test_torch_transformer_encoder_stack(onnx_diff):
    torch.manual_seed(0)
    model = EncoderStack().eval()
    pad = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    inputs = {"ids": torch.randint(0, 30, (2, 6)), "pad": pad}
    with torch.no_grad():
        want = model(**inputs)
    graph = StructureGraph(model, inputs)  # swaps in HeadPrunedMHA: same function
    with torch.no_grad():
        assert torch.allclose(model(**inputs), want, atol=1e-5)
    assert {g.id for g in graph.prunable()} == {
        "enc.layers.0.self_attn",
        "enc.layers.0.linear1",
        "enc.layers.1.self_attn",
        "enc.layers.1.linear1",
    }
    halve_heads_and_ffn(model, inputs)
    for layer in model.enc.layers:
        assert layer.self_attn.num_heads == 2 and layer.linear1.out_features == 32
    assert onnx_diff(model, inputs) < 1e-4
