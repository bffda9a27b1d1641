"""A tiny text transformer classifier (pre-norm encoder, mean pooling, linear head).

Attention is written out with separate query/key/value/output projections and plain tensor
ops, like Hugging Face BERT, so that whole heads can be pruned and the model exports to ONNX.
Padding positions (token id 0) are masked out of attention and pooling.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.num_heads * self.head_dim
        self.query = nn.Linear(dim, inner)
        self.key = nn.Linear(dim, inner)
        self.value = nn.Linear(dim, inner)
        self.out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # -1 for the head count: the projection width decides it, so pruned heads just work.
        q = self.query(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        k = self.key(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        v = self.value(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(pad[:, None, None, :], torch.finfo(scores.dtype).min)
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.out(context)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn)
        self.ffn_out = nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pad)
        return x + self.ffn_out(F.gelu(self.ffn_in(self.norm2(x))))


class TextClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        classes: int,
        dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        ffn: int = 512,
        max_len: int = 64,
    ):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, num_heads, ffn) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pad = input_ids == 0
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)[None]
        for block in self.blocks:
            x = block(x, pad)
        x = self.norm(x)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.head(pooled)


def build(
    vocab_size: int = 4000,
    classes: int = 8,
    dim: int = 128,
    depth: int = 2,
    num_heads: int = 4,
    ffn: int = 512,
    max_len: int = 64,
) -> TextClassifier:
    return TextClassifier(vocab_size, classes, dim, depth, num_heads, ffn, max_len)
