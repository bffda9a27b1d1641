"""Training helpers shared by the digits sample models (deterministic, CPU, seconds)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same deterministic 75/25 stratified split as ``builtin:digits``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return (
        torch.from_numpy(xtr),
        torch.from_numpy(ytr).long(),
        torch.from_numpy(xte),
        torch.from_numpy(yte).long(),
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def train_digits(
    model: nn.Module,
    out: Path,
    *,
    shape: tuple[int, ...],
    epochs: int,
    lr: float = 2e-3,
    seed: int = 0,
) -> float:
    """Train with Adam + cosine decay, save the state dict as safetensors; returns accuracy."""
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = digits_split()
    xtr, xte = xtr.reshape(-1, *shape), xte.reshape(-1, *shape)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(xtr) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=generator)
        for i in range(0, len(xtr), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{epochs}: test accuracy {accuracy(model, xte, yte):.4f}")
    acc = accuracy(model, xte, yte)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out))
    print(
        f"saved {out} ({out.stat().st_size} bytes), accuracy {acc:.4f}, "
        f"{time.perf_counter() - start:.1f}s"
    )
    return acc
