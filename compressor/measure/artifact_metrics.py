"""The plan's metric on each lower-precision ONNX copy a run wrote (int8, int8-static, fp16):
the same evaluation data and metric as the torch model, run in onnxruntime, so a copy that no
longer does the job shows it in the report and can fail a gate."""

from __future__ import annotations

from typing import Any

from compressor.formats.onnx.quantize import ARTIFACT_KEYS
from compressor.formats.onnx.session import OnnxModel


def evaluate_artifacts(ctx: Any, artifacts: dict[str, Any]) -> None:
    """Set ``artifacts[key]["metric"] = {"name", "value"}`` for every quantised copy (nothing
    without evaluation data)."""
    metric = ctx.metric()
    if metric is None:
        return
    for key in ARTIFACT_KEYS.values():
        art = artifacts.get(key)
        if art is None:
            continue
        ctx.log(f"[dim]evaluating {art['path']} ({metric.name}, onnxruntime)[/]")
        value = ctx.evaluate(OnnxModel(art["path"]))
        art["metric"] = {"name": metric.name, "value": value}
