"""Distributed training through torch.distributed and torchrun.

``compress run plan.yaml`` works unchanged under ``torchrun --nproc-per-node N``: each
process finds its rank in the environment torchrun sets, joins the process group (NCCL on
GPUs, gloo on CPU), trains on its shard of the data inside DistributedDataParallel, and
only rank 0 writes artifacts and reports. Decisions that must agree across ranks (which
units to prune) are made on rank 0 and broadcast.

With ``parallel: fsdp`` a training stage shards instead of replicating: a copy of the model is
split across the processes with torch's ``fully_shard`` (FSDP2: each repeated block, such as a
decoder layer, is one unit, the rest one root unit), so each process holds 1/N of the weights,
gradients and optimizer state being trained (4x the weights under Adam). The model the stage
was given stays whole; the trained weights are gathered back into it before every evaluation
and at the end.
"""

from __future__ import annotations

import copy
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


def shard_copy(module: torch.nn.Module, state: DistState, device: torch.device) -> torch.nn.Module:
    """A copy of ``module`` sharded across the job's processes with ``fully_shard``.

    Every element of a ``ModuleList`` of two or more blocks (decoder layers, encoder layers)
    becomes its own unit, gathered only while it runs; the remaining parameters (embeddings,
    the LM head tied to them, final norms) form the root unit.
    """
    from torch.distributed.device_mesh import init_device_mesh  # deferred: only under fsdp
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (state.world_size,))
    sharded = copy.deepcopy(module).to(device)
    for child in sharded.modules():
        if isinstance(child, torch.nn.ModuleList) and len(child) >= 2:
            for block in child:
                fully_shard(block, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    return sharded


def gather_into(sharded: torch.nn.Module, module: torch.nn.Module) -> None:
    """Copy the full (unsharded) weights of ``sharded`` into ``module`` on every rank."""
    from torch.distributed.checkpoint.state_dict import (  # deferred: only under fsdp
        StateDictOptions,
        get_model_state_dict,
    )

    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
    target = module.state_dict()
    with torch.no_grad():
        for name, tensor in full.items():
            target[name].copy_(tensor.to(target[name].device))


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
