"""Data-source factories used by tests through 'module:function' references."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


class Pairs(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        return torch.full((64,), float(i)), i % 3


def pairs_dataset(n: str = "10") -> Dataset:
    return Pairs()


def dict_loader() -> DataLoader:
    data = [{"x": torch.full((64,), float(i)), "labels": i % 2} for i in range(6)]
    return DataLoader(data, batch_size=4)


def not_a_dataset() -> int:
    return 3
