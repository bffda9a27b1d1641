"""Real architectures built offline from tiny configs, as plan factories (``module:function``)."""

from __future__ import annotations

import torch
import torch.nn as nn

# Before any torchvision import (ruff's import sorting would move a local one after it).
import tests.compat.torchvision_cpu  # noqa: F401


def tiny_bert_mlm() -> nn.Module:
    """BERT with its masked-LM head, whose decoder weight is tied to the word embeddings."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertForMaskedLM(config).eval()


def tiny_t5_encoder() -> nn.Module:
    """T5's encoder: ``shared.weight`` and ``encoder.embed_tokens.weight`` are one tensor."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    return T5EncoderModel(config).eval()


def torchvision_mlp() -> nn.Module:
    """torchvision's MLP: an ``nn.Sequential`` whose forward takes ``input``."""
    from torchvision.ops import MLP

    torch.manual_seed(0)
    return MLP(8, [16, 4]).eval()


def tiny_convnext() -> nn.Module:
    """torchvision's ConvNeXt with two narrow stages (layer scale in every block)."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    model = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)
    for block in model.modules():  # random layer scales, so that a wrong cut shows
        if hasattr(block, "layer_scale"):
            nn.init.uniform_(block.layer_scale, 0.5, 1.5)
    return model.eval()


def mnasnet() -> nn.Module:
    """torchvision's MNASNet (its loader checks the state-dict version in ``_metadata``)."""
    from torchvision.models import mnasnet0_5

    torch.manual_seed(0)
    return mnasnet0_5(num_classes=10).eval()
