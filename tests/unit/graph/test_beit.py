"""timm BEiT: the attention computes qkv with ``F.linear`` on the module's weight plus
``cat(q_bias, zero k bias, v_bias)``, has a relative-position bias table per head and reshapes
its output to the input's width. The residual stream reaching those parameters is the hidden
size (kept unless asked), so ``amount`` prunes the MLP widths, as it does for a ViT."""

from __future__ import annotations

import pytest
import torch

from compressor.graph import StructureGraph


def _beit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "beit_base_patch16_224",
        pretrained=False,
        img_size=32,
        depth=1,
        embed_dim=32,
        num_heads=2,
        num_classes=5,
    ).eval()


def test_beit_residual_stream_is_the_hidden_size_and_the_mlp_prunes(tmp_path):
    from .helpers import onnx_max_diff

    model, x = _beit(), torch.rand(1, 3, 32, 32)
    graph = StructureGraph(model, {"x": x})
    hidden = graph.group("patch_embed.proj")
    assert "hidden size" in (hidden.blocked or "")  # before: offered, then refused
    mlp = graph.group("blocks.0.mlp.fc1")
    assert mlp.blocked is None and mlp.size == 128
    graph.remove(mlp, range(0, 128, 3))
    graph.verify()
    assert model.blocks[0].mlp.fc1.out_features == 85
    assert onnx_max_diff(model, {"x": x}, tmp_path / "m.onnx") < 1e-4
