"""``compress init``: a commented starter plan for a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from compressor.errors import CheckpointError
from compressor.formats.architecture import ArchitectureRef
from compressor.formats.binding import first_argument


def _guess_inputs(model: nn.Module) -> tuple[str, str]:
    """A best guess at the model's input from its first layer, plus a comment."""
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return (
                "input_ids: {shape: [1, 128], dtype: int64, low: 0, "
                f"high: {module.num_embeddings}}}",
                "token ids; set the sequence length you deploy with",
            )
        if isinstance(module, nn.Conv2d):
            return (
                f"x: {{shape: [1, {module.in_channels}, 224, 224], dtype: float32}}",
                "guessed from the first conv: set your real image size",
            )
        if isinstance(module, nn.Conv1d):
            return (
                f"x: {{shape: [1, {module.in_channels}, 128], dtype: float32}}",
                "guessed from the first conv: set your real length",
            )
        if isinstance(module, nn.Linear):
            return (
                f"x: {{shape: [1, {module.in_features}], dtype: float32}}",
                "guessed from the first linear layer",
            )
    return "x: {shape: [1, 3, 224, 224], dtype: float32}", "set the real input name and shape"


def starter_plan(checkpoint: Path, architecture: str | None, plan_dir: Path) -> str:
    """The text of a starter plan for ``checkpoint`` (paths relative to ``plan_dir``)."""
    if not checkpoint.exists():
        raise CheckpointError(f"checkpoint {checkpoint} does not exist")
    rel = Path(os.path.relpath(checkpoint.resolve(), plan_dir))
    is_hf = checkpoint.is_dir()
    if is_hf and not (checkpoint / "config.json").is_file():
        raise CheckpointError(f"{checkpoint} is a folder but not a Hugging Face model folder")
    inputs_line, inputs_comment = (
        "x: {shape: [1, 3, 224, 224], dtype: float32}",
        ("set the real input name and shape"),
    )
    if architecture and not is_hf:
        model = ArchitectureRef("factory", architecture, {}).build()
        inputs_line, inputs_comment = _guess_inputs(model)
        # The real name of forward()'s first argument (Sequential takes 'input'), so the
        # written plan calls the model by its own argument names.
        name = first_argument(model)
        if name:
            inputs_line = name + ":" + inputs_line.split(":", 1)[1]
    lines: list[Any] = [
        "# compress plan: validate with `compress validate PLAN`, run with `compress run PLAN`.",
        "# Paths are relative to this file. Schema: `compress schema`.",
        "version: 1",
        "seed: 0",
        "model:",
    ]
    if is_hf:
        lines += [
            f"  hf: {rel}                     # Hugging Face folder, loaded offline",
            "  task: auto                    # embedding | classification | base",
        ]
    else:
        lines += [f"  checkpoint: {rel}"]
        if architecture:
            lines += [f"  architecture: {architecture}"]
        else:
            lines += ["  architecture: mypackage.models:build   # TODO: the factory of your model"]
        lines += [f"  inputs:                       # {inputs_comment}", f"    {inputs_line}"]
    lines += [
        "data:",
        "  train: null                   # e.g. data/train.safetensors, data/train.jsonl,",
        "  eval: null                    #      builtin:digits?split=test, or pkg.mod:fn",
        "  batch_size: 64",
        "stages:",
        "  - prune: {amount: 0.3, criterion: l2, scope: per-layer, round_to: 8}",
        "  # - finetune: {epochs: 2, lr: 1.0e-4}     # needs data.train with labels",
        "  # - distill: {epochs: 2}                  # learns from the original model",
        "export:",
        "  formats: [safetensors, onnx]",
        "  onnx: {opset: 18, verify: true}",
        "bench:",
        "  runtimes: [onnxruntime, torch]",
        "  batch_sizes: [1, 32]",
        "gates:                          # a failed gate exits 1 (for CI)",
        "  # max_metric_drop: 0.01",
        "  # min_speedup: 1.5",
        "  # max_size_ratio: 0.6",
    ]
    return "\n".join(lines) + "\n"
