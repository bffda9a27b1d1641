"""A small MLP for scikit-learn's 8x8 handwritten digits (64 inputs, 10 classes)."""

from __future__ import annotations

import torch
import torch.nn as nn


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 256, depth: int = 2, classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        width = 64
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.flatten(1)))


def build(hidden: int = 256, depth: int = 2, classes: int = 10) -> DigitsMLP:
    return DigitsMLP(hidden=hidden, depth=depth, classes=classes)
