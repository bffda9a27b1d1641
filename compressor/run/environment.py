"""Where a run executes: the device it resolves to, and the environment recorded in the
report (torch, CUDA, driver, threads, distributed world)."""

from __future__ import annotations

import subprocess
from typing import Any

import torch

from compressor.errors import (
    StageError,
)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise StageError(
            "the plan asks for device: cuda but no CUDA GPU is available here",
            hint="use device: auto (GPU when present) or device: cpu",
        )
    return torch.device(requested)


def run_environment(device: torch.device, dist: Any) -> dict[str, Any]:
    """Where the stages ran: device (with GPU name and driver), versions, process count."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "world_size": dist.world_size if dist is not None else 1,
        "backend": dist.backend if dist is not None else None,
        "written_by_rank": 0,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["driver"] = _nvidia_driver()
    return info


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, IndexError, subprocess.SubprocessError):
        return None
