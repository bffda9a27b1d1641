"""onnxruntime sessions for exported models: a session with the run's threads and providers,
feeds built from named torch inputs, and :class:`OnnxModel`, a callable that takes the same
inputs as the torch model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from compressor.errors import CheckpointError, DataError, first_line


def ort_session(
    path: Path | str,
    *,
    device: str = "cpu",
    threads: int | None = None,
    optimization: str = "all",
    spinning: bool = True,
) -> Any:
    """An onnxruntime session on ``device`` with ``threads`` intra-op threads.

    ``spinning=False`` parks the session's threads as soon as a call ends. Timing sessions
    want that: models are timed in interleaved rounds on the same cores, and the threads of
    the session that just ran keep spinning (busy-waiting for more work) while the next one
    runs. Measured here with two sessions of the same graph on 2 cores: p50 5.75 / 7.66 ms
    and p90 up to 12.6 ms spinning (the same model "1.3x slower" than itself) against
    4.94 / 4.95 ms and p90 5.55 ms parked.
    """

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DataError(
                "onnxruntime on cuda needs the onnxruntime-gpu package (CUDAExecutionProvider)",
                hint="install onnxruntime-gpu, or bench onnxruntime on cpu only",
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise CheckpointError(f"onnxruntime cannot load {path}: {first_line(str(e))}") from None


def timing_session(path: Path | str, *, device: str = "cpu", threads: int | None = None) -> Any:
    """A session for timing beside other models: its threads park after each call (a
    spinning session steals the cores of the next model timed; see :func:`ort_session`)."""
    return ort_session(path, device=device, threads=threads, spinning=False)


_ORT_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def ort_feeds(session: Any, inputs: Mapping[str, torch.Tensor], path: Any = "") -> dict:
    """Named numpy feeds for ``session``, cast to the graph's declared input types."""
    wanted = {i.name: i for i in session.get_inputs()}
    missing = [n for n in wanted if n not in inputs]
    extra = [n for n in inputs if n not in wanted]
    if missing or extra:
        raise DataError(
            f"ONNX file {path} takes inputs {list(wanted)}, got {list(inputs)}",
            hint="name the inputs as the exported graph does (see compress inspect FILE)",
        )
    feeds = {}
    for name, info in wanted.items():
        array = inputs[name].detach().cpu().numpy()
        dtype = _ORT_NUMPY.get(info.type)
        feeds[name] = array.astype(dtype, copy=False) if dtype is not None else array
    return feeds


class OnnxModel:
    """An ONNX file behind the torch model's calling convention.

    ``OnnxModel(path)(x=...)`` takes the same named inputs as the torch model and returns the
    first output as a torch tensor, so tests and metrics treat both alike.
    """

    training = False

    def __init__(self, path: Path | str, *, device: str = "cpu", threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX file {self.path} does not exist")
        self.session = ort_session(self.path, device=device, threads=threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: Mapping[str, torch.Tensor]) -> list[np.ndarray]:
        """All outputs, as numpy arrays."""
        return self.session.run(None, ort_feeds(self.session, inputs, self.path))

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.run(inputs)[0]))

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        return self
