"""Distributed training state under torchrun (rank, world size)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistState:
    rank: int
    world_size: int
    local_rank: int


def current() -> DistState | None:
    """The torchrun process group this process belongs to, or None when run alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return DistState(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]),
                     int(os.environ.get("LOCAL_RANK", "0")))
