"""onnxruntime's graph-optimised copy of a verified ONNX file, written atomically next to the
original (quantised copies: :mod:`compressor.formats.onnx.quantize`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import onnxruntime as ort

from compressor.formats.onnx.export import artifact_size, publish, staging_dir


def optimize_onnx(src: Path, dst: Path, *, external: bool) -> dict[str, Any]:
    """Write onnxruntime's graph-optimised model (extended level: portable across CPUs)."""

    with staging_dir(dst.parent) as stage:
        staged = stage / dst.name
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(staged)
        if external:
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", dst.name + ".data"
            )
        t0 = time.perf_counter()
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        seconds = time.perf_counter() - t0
        publish(staged, dst)
    return {
        "path": str(dst),
        "size_bytes": artifact_size(dst),
        "source": str(src),
        "level": "extended",
        "seconds": round(seconds, 2),
    }
