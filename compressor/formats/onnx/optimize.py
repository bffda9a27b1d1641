"""Optional copies of a verified ONNX file: onnxruntime's graph-optimised model and int8
dynamic quantisation, each written atomically next to the original."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from compressor.errors import ExportError, first_line
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


def quantize_onnx(src: Path, dst: Path, *, external: bool) -> dict[str, Any]:
    """Write an int8 dynamically quantised copy (weights int8, activations quantised at run
    time). Its outputs differ from the float model by design, so it is reported, not gated."""

    with staging_dir(dst.parent) as stage:
        staged = stage / dst.name
        t0 = time.perf_counter()
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # a "consider pre-processing" note on the root logger
        try:
            quantize_dynamic(
                str(src),
                str(staged),
                weight_type=QuantType.QInt8,
                use_external_data_format=external,
            )
        except Exception as e:
            raise ExportError(
                f"int8 quantisation of {src.name} failed: {first_line(str(e))}",
                hint="set export.onnx.quantize: false",
            ) from None
        finally:
            logging.disable(previous)
        seconds = time.perf_counter() - t0
        publish(staged, dst)
    return {
        "path": str(dst),
        "size_bytes": artifact_size(dst),
        "source": str(src),
        "weight_type": "int8",
        "seconds": round(seconds, 2),
    }
