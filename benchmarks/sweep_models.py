"""Model factories for ``benchmarks/coverage_sweep.py``: ``benchmarks.sweep_models:build``.

Random initialisation only (nothing is downloaded). Importing this module installs the
test-only torchvision shim (``tests/compat/torchvision_cpu.py``), because the PyPI torchvision
wheel does not import next to the CPU build of torch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

import tests.compat.torchvision_cpu  # noqa: F401  (must run before torchvision is imported)


def build(source: str, name: str, seed: int = 0, calibrate: int = 0, **kwargs: Any) -> nn.Module:
    """A torchvision (``source: tv``) or timm (``source: timm``) model, random init.

    ``calibrate``: an image size; batch-norm statistics are then set from random images of
    that size. Random weights with unit running variances let activations grow layer by
    layer (torchvision's Inception-v3 outputs reach 5e8), and an ONNX check with a fixed
    tolerance then fails on float rounding alone; calibrated statistics keep activations at
    the scale of a trained model.
    """
    torch.manual_seed(seed)
    if source == "tv":
        import torchvision

        model = torchvision.models.get_model(name, weights=None, **kwargs)
    elif source == "timm":
        import timm

        model = timm.create_model(name, pretrained=False, **kwargs)
    else:
        raise ValueError(f"unknown source {source!r} (tv or timm)")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if calibrate and norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
        model.train()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _ in range(2):
                model(torch.rand(4, 3, calibrate, calibrate, generator=generator))
        for m in norms:
            m.momentum = 0.1
    return model.eval()
