"""What a stage may use of the run besides the model it transforms.

Stages see this protocol, not the runner's class (``compressor.run.context.RunContext``
implements it), so the stages layer never imports the layer that drives it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from rich.console import Console

from compressor.data.bundle import DataBundle


class StageContext(Protocol):
    """The run as a stage sees it: its plan, data, device, teacher, history and report."""

    plan: Any  # compressor.plan.schema.Plan (the layer above; stages read its fields)
    base_dir: Path
    loaded: Any  # compressor.formats.loading.LoadedModel
    device: torch.device
    data: DataBundle
    console: Console
    quiet: bool
    history: list[dict[str, Any]]  # structural edits, appended by shape-changing stages
    stage_report: dict[str, Any]  # the current stage's details for the run report
    stage_index: int
    stage_name: str
    run_dir: Path | None
    distributed: Any  # compressor.training.distributed.DistState under torchrun, else None

    @property
    def original(self) -> nn.Module | None: ...

    @property
    def input_specs(self) -> dict[str, Any]: ...

    def example_inputs(self, batch_size: int | None = None) -> dict[str, torch.Tensor]: ...

    def input_specs_batch(self) -> int: ...

    def stage_seed(self, offset: int = 0) -> int: ...

    def teacher(self) -> nn.Module | None: ...

    def metric(self) -> Any: ...

    def train_loader(
        self,
        *,
        batch_size: int | None = None,
        few_shot: int | None = None,
        seed: int | None = None,
        split: str = "train",
    ) -> Any: ...

    def broadcast(self, obj: Any) -> Any: ...

    def evaluate(
        self,
        model: nn.Module,
        *,
        max_batches: int | None = None,
        also: dict[str, float] | None = None,
    ) -> float | None: ...

    def log(self, message: str) -> None: ...

    def is_main_process(self) -> bool: ...

    def frozen_copy(self, model: nn.Module) -> nn.Module: ...

    def adopt_tokenizer(self, model: nn.Module) -> bool: ...
