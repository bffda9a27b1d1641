"""Lower-precision copies of a verified ONNX file, made with onnxruntime's own tooling and
written atomically next to the original:

* ``dynamic`` - int8 weights, activations quantised at run time (``quantize_dynamic``); no
  data needed.
* ``static`` - int8 weights and activations in QDQ format (``quantize_static``) around the
  matrix products and convolutions, activation ranges calibrated on batches of the plan's
  calibration data (MinMax), weights per channel; norms and softmax stay float.
* ``fp16`` - float16 weights and arithmetic with float32 inputs and outputs
  (``onnxruntime.transformers.float16``), for targets that run half precision.

Their outputs differ from the float model by design: each is measured (metric, latency,
size) and reported; only a gate on it can fail a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from compressor.errors import ExportError, first_line
from compressor.formats.onnx.export import artifact_size, publish, staging_dir

KINDS = ("dynamic", "static", "fp16")
ARTIFACT_KEYS = {"dynamic": "onnx_int8", "static": "onnx_int8_static", "fp16": "onnx_fp16"}
FILE_NAMES = {
    "dynamic": "model.int8.onnx",
    "static": "model.int8-static.onnx",
    "fp16": "model.fp16.onnx",
}


# What static int8 quantises: matrix products and convolutions, where int8 kernels pay off.
STATIC_OPS = ("MatMul", "Gemm", "Conv")


class _Quiet:
    """Silence onnxruntime's "consider pre-processing" notes on the root logger."""

    def __enter__(self) -> None:
        self.previous = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *_exc: Any) -> None:
        logging.disable(self.previous)


def _finish(kind: str, src: Path, dst: Path, staged: Path, t0: float, **extra: Any) -> dict:
    seconds = time.perf_counter() - t0
    publish(staged, dst)
    return {
        "path": str(dst),
        "size_bytes": artifact_size(dst),
        "source": str(src),
        "kind": kind,
        "seconds": round(seconds, 2),
        **extra,
    }


def _failed(kind: str, src: Path, error: Exception) -> ExportError:
    return ExportError(
        f"{kind} quantisation of {src.name} failed: {first_line(str(error))}",
        hint=f"remove {kind} from export.onnx.quantize",
    )


def quantize_dynamic_int8(src: Path, dst: Path, *, external: bool) -> dict[str, Any]:
    """int8 weights, activations quantised at run time."""
    with staging_dir(dst.parent) as stage, _Quiet():
        staged, t0 = stage / dst.name, time.perf_counter()
        try:
            quantize_dynamic(
                str(src),
                str(staged),
                weight_type=QuantType.QInt8,
                use_external_data_format=external,
            )
        except Exception as e:
            raise _failed("dynamic int8", src, e) from None
        return _finish("dynamic", src, dst, staged, t0, weight_type="int8", activations="dynamic")


class _Batches(CalibrationDataReader):
    """Calibration batches as onnxruntime feeds (only the graph's own inputs)."""

    def __init__(self, batches: Iterable[Mapping[str, torch.Tensor]], names: list[str]):
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(
            [{n: b[n].detach().cpu().numpy() for n in names if n in b} for b in batches]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_static_int8(
    src: Path,
    dst: Path,
    batches: list[Mapping[str, torch.Tensor]],
    *,
    external: bool,
) -> dict[str, Any]:
    """int8 weights (per channel) and activations (QDQ), ranges from ``batches``.

    Raises:
        ExportError: no calibration batch, or onnxruntime's quantiser failed.
    """
    if not batches:
        raise ExportError(
            "static int8 quantisation needs calibration data and got none",
            hint="set data.calibration (or data.train), or use quantize: [dynamic]",
        )
    names = [i.name for i in onnx.load(str(src), load_external_data=False).graph.input]
    with staging_dir(dst.parent) as stage, _Quiet():
        staged, t0 = stage / dst.name, time.perf_counter()
        try:
            quantize_static(
                str(src),
                str(staged),
                _Batches(batches, names),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                # Only the weight-bearing ops: quantising the inputs of LayerNorm, Softmax
                # and GELU as well (onnxruntime's default) took all-MiniLM-L6-v2 from 0.962
                # to 0.328 cosine here, and a constant activation gave a NaN zero point.
                op_types_to_quantize=list(STATIC_OPS),
                use_external_data_format=external,
            )
        except Exception as e:
            raise _failed("static int8", src, e) from None
        return _finish(
            "static",
            src,
            dst,
            staged,
            t0,
            weight_type="int8",
            activations="int8 (QDQ)",
            calibration_batches=len(batches),
            calibration_examples=sum(len(next(iter(b.values()))) for b in batches),
        )


def convert_fp16(src: Path, dst: Path, *, external: bool) -> dict[str, Any]:
    """float16 weights and compute; inputs and outputs stay float32."""
    from onnxruntime.transformers.float16 import (  # deferred: only for fp16 exports
        convert_float_to_float16,
    )

    with staging_dir(dst.parent) as stage, _Quiet():
        staged, t0 = stage / dst.name, time.perf_counter()
        try:
            model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
            onnx.save_model(
                model,
                str(staged),
                save_as_external_data=external,
                location=dst.name + ".data" if external else None,
            )
        except Exception as e:
            raise _failed("fp16", src, e) from None
        return _finish("fp16", src, dst, staged, t0, weight_type="float16", io="float32")
