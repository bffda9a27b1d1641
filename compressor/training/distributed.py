"""Distributed training through torch.distributed and torchrun.

``compress run plan.yaml`` works unchanged under ``torchrun --nproc-per-node N``: each
process finds its rank in the environment torchrun sets, joins the process group (NCCL on
GPUs, gloo on CPU), trains on its shard of the data inside DistributedDataParallel, and
only rank 0 writes artifacts and reports. Decisions that must agree across ranks (which
units to prune) are made on rank 0 and broadcast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistState:
    rank: int
    world_size: int
    local_rank: int
    backend: str


_STATE: DistState | None = None


def current() -> DistState | None:
    """This process's place in a torchrun job (joining the group on first use), or None."""
    global _STATE
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if _STATE is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_nccl = torch.cuda.is_available() and os.environ.get("COMPRESS_DIST_BACKEND") != "gloo"
        backend = "nccl" if use_nccl else "gloo"
        if not dist.is_initialized():
            if use_nccl:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend=backend)
        _STATE = DistState(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    return _STATE


def device_for(state: DistState | None, requested: torch.device) -> torch.device:
    """Each rank uses its own GPU (``cuda:LOCAL_RANK``) when the run is on CUDA."""
    if state is not None and requested.type == "cuda":
        return torch.device("cuda", state.local_rank)
    return requested


def broadcast_object(obj: Any, state: DistState | None) -> Any:
    """Rank 0's ``obj`` on every rank (a no-op when not distributed)."""
    if state is None:
        return obj
    box = [obj if state.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any, state: DistState | None) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if state is None:
        return [obj]
    gathered: list[Any] = [None] * state.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def sync_from_rank0(module: torch.nn.Module, state: DistState | None) -> None:
    """Copy rank 0's parameters and buffers to every rank.

    DDP keeps parameters identical but broadcasts buffers only at the start of each forward,
    so after training the other ranks' batch-norm statistics lag one step behind rank 0's.
    """
    if state is None:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def barrier(state: DistState | None) -> None:
    if state is not None:
        dist.barrier()


def shutdown() -> None:
    global _STATE
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _STATE = None


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run this ``compress`` command under torchrun with ``nproc`` local processes."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "cli.main",
        *argv,
    ]
    return subprocess.call(command)
