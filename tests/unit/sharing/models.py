"""Tiny models with planted duplicate and proportional units, for exact-merge tests."""

from __future__ import annotations

import torch
import torch.nn as nn


class TinyMLP(nn.Module):
    """``fc2(act(fc1(x)))``: one hidden group of ``hidden`` units."""

    def __init__(self, act: nn.Module, hidden: int = 6):
        super().__init__()
        self.fc1 = nn.Linear(8, hidden)
        self.act = act
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def plant_proportional(model: TinyMLP, plan: dict[int, tuple[int, float]]) -> TinyMLP:
    """Make hidden unit ``j`` exactly ``s`` times unit ``i`` for each ``j: (i, s)``."""
    with torch.no_grad():
        for j, (i, s) in plan.items():
            model.fc1.weight[j] = s * model.fc1.weight[i]
            model.fc1.bias[j] = s * model.fc1.bias[i]
    return model


class TinyResidual(nn.Module):
    """conv-BN-ReLU stem, a residual block (conv-BN-ReLU-conv-BN, add, ReLU), mean pool,
    linear head: the stem and the block's second conv share one channel group."""

    def __init__(self, width: int = 6):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(r)))
        out = torch.relu(r + self.bn2(self.conv2(y)))
        return self.head(out.mean((2, 3)))


def random_norm_stats(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial batch-norm statistics and affine parameters (eval mode uses them)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.2)


def plant_residual_channel(model: TinyResidual, j: int, i: int, s: float) -> None:
    """Make residual channel ``j`` exactly ``s`` times channel ``i`` in both producers: same
    conv rows, batch norm scaled by ``s`` (so the post-norm pre-activations are ``s``x)."""
    with torch.no_grad():
        for conv, bn in ((model.stem, model.bn0), (model.conv2, model.bn2)):
            conv.weight[j] = conv.weight[i]
            bn.running_mean[j] = bn.running_mean[i]
            bn.running_var[j] = bn.running_var[i]
            bn.weight[j] = s * bn.weight[i]
            bn.bias[j] = s * bn.bias[i]
