"""ONNX export that is verified before it is trusted, plus optional onnxruntime optimisation
and int8 dynamic quantisation.

Every export is run in onnxruntime on real inputs at two batch sizes (and a second sequence
length for text models) and compared with torch; beyond ``atol + rtol * |torch|`` the export
fails with the numbers. ``exporter: auto`` tries the torch.export-based exporter first and
falls back to the legacy TorchScript one when it raises *or* when its file fails
verification; the reason is recorded. Files are written into a hidden staging folder and
moved onto their final names only once verified, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn as nn

from compressor.errors import ExportError, PlanError, first_line
from compressor.formats.onnx.session import ort_feeds, ort_session
from compressor.forward import call_model, model_device, primary_output, resize_batch
from compressor.forward import resize_sequence as _resize_sequence
from compressor.spec.sections import InputSpec

# Protobuf cannot hold a model over 2 GiB; leave room for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2
VERIFY_BATCHES = (1, 5)  # neither equals the export example's batch (2): proves it is dynamic
EXPORT_BATCH = 2  # torch.export specialises axes of size 0 and 1, so never export at 1


class PrimaryOutput(nn.Module):
    """Positional inputs in a fixed order -> the model's primary output tensor.

    Positional, so both exporters name the graph inputs alike; one output, so that every
    runtime returns the tensor that metrics and verification compare.
    """

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.inner = model
        self.names = list(names)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return primary_output(call_model(self.inner, dict(zip(self.names, args, strict=True))))


# ------------------------------------------------------------------ shapes


def dynamic_axes_for(inputs: Mapping[str, torch.Tensor], specs: Mapping[str, Any] | None = None):
    """Axes of each input that vary at run time: the spec's, else batch (+ sequence for rank-2
    integer inputs such as token ids and masks)."""
    axes: dict[str, list[int]] = {}
    for name, tensor in inputs.items():
        spec = (specs or {}).get(name)
        if spec is not None:
            axes[name] = [a for a in spec.dynamic_axes() if a < tensor.dim()]
        else:
            axes[name] = [0] + ([1] if tensor.dim() == 2 and not tensor.is_floating_point() else [])
    return axes


def has_sequence_axis(axes: Mapping[str, list[int]], inputs: Mapping[str, torch.Tensor]) -> bool:
    return any(1 in axes.get(n, []) and t.dim() == 2 for n, t in inputs.items())


def resize_sequence(inputs: Mapping[str, torch.Tensor], seq_len: int) -> dict[str, torch.Tensor]:
    """``modeling.resize_sequence``, re-exported for callers of this module."""
    return _resize_sequence(inputs, seq_len)


def shape_label(inputs: Mapping[str, torch.Tensor], seq: bool) -> str:
    """``"5"`` (batch) or ``"5x32"`` (batch x sequence length) for reports."""
    first = next(iter(inputs.values()))
    return f"{first.shape[0]}x{first.shape[1]}" if seq and first.dim() >= 2 else f"{first.shape[0]}"


def verification_inputs(example: Mapping[str, torch.Tensor], axes: Mapping[str, list[int]]):
    """Real inputs at two batch sizes (the second also at a shorter sequence for text); only
    the example itself when the batch axis is static."""
    if not any(0 in a for a in axes.values()):
        return [dict(example)]
    second = resize_batch(example, VERIFY_BATCHES[1])
    if has_sequence_axis(axes, example):
        seq = next(t.shape[1] for t in example.values() if t.dim() == 2)
        if seq >= 4:
            second = resize_sequence(second, seq // 2)
    return [resize_batch(example, VERIFY_BATCHES[0]), second]


# ------------------------------------------------------------------ verification


def compare(
    model: nn.Module,
    path: Path,
    batches: list[dict[str, torch.Tensor]],
    *,
    atol: float,
    rtol: float,
    seq: bool,
) -> dict[str, Any]:
    """Run ``path`` in onnxruntime and ``model`` in torch on each batch and compare."""
    session = ort_session(path)
    checks: list[dict[str, Any]] = []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            ref = primary_output(call_model(model, batch)).detach().cpu().double().numpy()
            got = np.asarray(session.run(None, ort_feeds(session, batch, path))[0]).astype(
                np.float64
            )
            label = shape_label(batch, seq)
            if ref.shape != got.shape:
                checks.append(
                    {
                        "shape": label,
                        "passed": False,
                        "max_abs_diff": None,
                        "problem": f"output shape {got.shape} != torch {ref.shape}",
                    }
                )
                continue
            diff = np.abs(np.nan_to_num(ref) - np.nan_to_num(got))
            ok = bool(np.allclose(got, ref, atol=atol, rtol=rtol, equal_nan=True))
            checks.append(
                {
                    "shape": label,
                    "passed": ok,
                    "max_abs_diff": float(diff.max()) if diff.size else 0.0,
                }
            )
    diffs = [c["max_abs_diff"] for c in checks if c["max_abs_diff"] is not None]
    return {
        "atol": atol,
        "rtol": rtol,
        "passed": all(c["passed"] for c in checks),
        "max_abs_diff": {c["shape"]: c["max_abs_diff"] for c in checks},
        "max_abs_diff_overall": max(diffs) if diffs else None,
        "checks": checks,
    }


def describe_failure(result: dict[str, Any]) -> str:
    bad = [c for c in result["checks"] if not c["passed"]]
    parts = [c.get("problem") or f"max |diff| {c['max_abs_diff']:.3g}" for c in bad]
    shapes = ", ".join(f"{c['shape']}: {p}" for c, p in zip(bad, parts, strict=True))
    return f"{shapes} (tolerance atol {result['atol']:g} + rtol {result['rtol']:g} x |torch|)"


# ------------------------------------------------------------------ export


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A hidden folder beside the final files; removed whatever happens."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-staging-", dir=out_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: Path, final: Path) -> list[Path]:
    """Move ``staged`` (and its external-data file) onto ``final``; data first, so a reader
    that sees the new graph also finds its new weights."""
    moved = []
    data = staged.with_name(staged.name + ".data")
    if data.exists():
        os.replace(data, final.with_name(final.name + ".data"))
        moved.append(final.with_name(final.name + ".data"))
    os.replace(staged, final)
    moved.append(final)
    return moved


def artifact_size(path: Path) -> int:
    """Bytes on disk of an ONNX file plus its external-data file, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    # The exporters print progress and deprecation notes; the report states what matters.
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript", "onnx_ir", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _run_exporter(
    kind: str,
    wrapper: nn.Module,
    example: dict[str, torch.Tensor],
    axes: dict[str, list[int]],
    path: Path,
    opset: int,
    external: bool,
) -> None:
    names = list(example)
    args = tuple(example.values())
    with quiet_exporter():
        if kind == "dynamo":
            dims = tuple({a: torch.export.Dim.DYNAMIC for a in axes[n]} or None for n in names)
            torch.onnx.export(
                wrapper,
                args=args,
                f=str(path),
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=(dims,),
                input_names=names,
                output_names=["output"],
                external_data=external,
            )
        else:
            dynamic = {n: {a: f"{n}_dim{a}" for a in axes[n]} for n in names if axes[n]}
            dynamic["output"] = {0: "batch"} if any(0 in axes[n] for n in names) else {}
            torch.onnx.export(
                wrapper,
                args=args,
                f=str(path),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=["output"],
                dynamic_axes=dynamic,
            )
            if external:
                to_external_data(path)


def to_external_data(path: Path) -> None:
    """Rewrite ``path`` with all weights in one ``<name>.data`` file beside it."""

    proto = onnx.load(str(path))
    for stray in path.parent.iterdir():  # the legacy exporter may write one file per tensor
        if stray != path:
            stray.unlink()
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )


def wants_external_data(model: nn.Module, mode: str) -> bool:
    if mode != "auto":
        return mode == "always"
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return size > EXTERNAL_DATA_THRESHOLD


def export_onnx(
    model: nn.Module,
    example: Mapping[str, torch.Tensor],
    path: Path,
    spec: Any,
    *,
    specs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ``path`` per an ``OnnxSpec`` and verify it on ``example``.

    Args:
        model: the torch model (left in eval mode).
        example: real inputs (any batch size); verification uses rows of them.
        path: the final ``.onnx`` path (``<path>.data`` too with external data).
        spec: ``plan.export.onnx``.
        specs: the model's input specs (dynamic axes).

    Returns:
        What was written: path, size_bytes, exporter, fallback_reason, opset, external_data,
        dynamic_axes, seconds, verification (max_abs_diff per verified shape).

    Raises:
        ExportError: every exporter failed or differs from torch beyond tolerance.
    """
    was_training = model.training
    if model_device(model).type != "cpu":
        model = copy.deepcopy(model).cpu()  # export and verify on CPU: portable graphs
    model.eval()
    example = {k: v.detach().cpu() for k, v in example.items()}
    axes = dynamic_axes_for(example, specs)
    seq = has_sequence_axis(axes, example)
    export_example = (
        resize_batch(example, EXPORT_BATCH) if any(0 in a for a in axes.values()) else example
    )
    checks = verification_inputs(example, axes)
    external = wants_external_data(model, spec.external_data)
    kinds = ["dynamo", "legacy"] if spec.exporter == "auto" else [spec.exporter]
    problems: list[str] = []
    try:
        for kind in kinds:
            with staging_dir(path.parent) as stage:
                staged = stage / path.name
                wrapper = PrimaryOutput(model, list(example)).eval()
                t0 = time.perf_counter()
                try:
                    _run_exporter(kind, wrapper, export_example, axes, staged, spec.opset, external)
                except Exception as e:  # any exporter failure means: try the next one
                    problems.append(f"{kind} exporter failed: {first_line(str(e))}")
                    continue
                finally:
                    model.eval()  # the legacy exporter leaves modules in train mode
                seconds = time.perf_counter() - t0
                verification = None
                if spec.verify:
                    verification = compare(
                        model, staged, checks, atol=spec.atol, rtol=spec.rtol, seq=seq
                    )
                    if not verification["passed"]:
                        problems.append(
                            f"{kind} export differs from torch at {describe_failure(verification)}"
                        )
                        continue
                publish(staged, path)
            return {
                "path": str(path),
                "size_bytes": artifact_size(path),
                "exporter": kind,
                "fallback_reason": problems[0] if problems else None,
                "opset": spec.opset,
                "external_data": external,
                "dynamic_axes": axes,
                "seconds": round(seconds, 2),
                "verification": verification,
            }
    finally:
        model.train(was_training)
    raise ExportError(
        f"ONNX export of {path.name} failed: " + "; ".join(problems),
        hint="raise export.onnx.atol / rtol if that difference is acceptable, try "
        "export.onnx.exporter: legacy or dynamo, or drop onnx from export.formats",
    )


_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(bool)": "bool",
}


def onnx_input_specs(paths: list[Path]) -> dict[str, Any]:
    """Input specs read from the first ONNX file: a symbolic batch axis becomes 1; any other
    symbolic axis cannot be guessed.

    Raises:
        PlanError: no file, or a symbolic non-batch axis (asks for ``--input``).
    """

    if not paths:
        raise PlanError(
            "no MODEL says what its inputs are",
            hint="pass --input NAME=SHAPE[:DTYPE], e.g. --input x=1x1x8x8",
        )
    specs = {}
    for i in ort_session(paths[0]).get_inputs():
        shape = [
            d if isinstance(d, int) else (1 if axis == 0 else None)
            for axis, d in enumerate(i.shape)
        ]
        if None in shape or i.type not in _ONNX_DTYPES:
            raise PlanError(
                f"{paths[0]}: input {i.name!r} has shape {i.shape} ({i.type}); compress cannot "
                "guess its example shape",
                hint=f"pass --input {i.name}=1x128:int64 (NAME=SHAPE[:DTYPE])",
            )
        specs[i.name] = InputSpec(shape=shape, dtype=_ONNX_DTYPES[i.type])
    return specs
