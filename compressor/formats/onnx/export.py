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
    """Run ``path`` in onnxruntime and ``model`` in torch on each batch and compare.

    A batch passes when every value is within ``atol + rtol * |torch|`` (NaN where torch has
    NaN, the same infinities). When it does not, and a tolerance was given, the model is run
    once more in float64 on a copy: a model whose float32 rounding alone exceeds the tolerance
    (random-init or badly conditioned nets, where a logit is a difference of large sums)
    passes when onnxruntime is no further from the float64 result than
    :data:`FLOAT64_SLACK` times torch's own float32 result is. An export that computes
    something else is off by far more than rounding and still fails.
    """
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
            check = {"shape": label, **value_differences(ref, got, atol=atol, rtol=rtol)}
            if not check["passed"] and (atol or rtol) and "problem" not in check:
                check.update(float64_check(model, batch, ref, got))
            checks.append(check)
    diffs = [c["max_abs_diff"] for c in checks if c["max_abs_diff"] is not None]
    return {
        "atol": atol,
        "rtol": rtol,
        "passed": all(c["passed"] for c in checks),
        "max_abs_diff": {c["shape"]: c["max_abs_diff"] for c in checks},
        "max_abs_diff_overall": max(diffs) if diffs else None,
        "checks": checks,
    }


# onnxruntime may be this many times further from the float64 result than torch's float32 is
# (it fuses batch norms into convolutions and sums in another order); an export that computes
# something else is off by orders of magnitude more.
FLOAT64_SLACK = 4.0
# The float64 copy is only made for models up to this size (it holds twice the fp32 bytes).
FLOAT64_MAX_BYTES = 2 * 1024**3


def value_differences(ref: np.ndarray, got: np.ndarray, *, atol: float, rtol: float):
    """Where onnxruntime's values ``got`` differ from torch's ``ref`` beyond tolerance.

    Returns ``passed``, ``max_abs_diff`` (over values finite in both), ``worst`` (the value
    furthest outside its tolerance: torch, onnxruntime, allowed) and ``problem`` when NaN or
    infinities differ (so a failure never reads as "max |diff| 0").
    """
    finite = np.isfinite(ref) & np.isfinite(got)
    diff = np.where(finite, np.abs(ref - got), 0.0)
    allowed = atol + rtol * np.abs(ref)
    out: dict[str, Any] = {"max_abs_diff": float(diff.max()) if diff.size else 0.0}
    nan_torch, nan_onnx = np.isnan(ref), np.isnan(got)
    problems = []
    if (nan_onnx & ~nan_torch).any():
        problems.append(f"{int((nan_onnx & ~nan_torch).sum())} NaN in onnxruntime, not in torch")
    if (nan_torch & ~nan_onnx).any():
        problems.append(f"{int((nan_torch & ~nan_onnx).sum())} NaN in torch, not in onnxruntime")
    inf_mismatch = (np.isinf(ref) | np.isinf(got)) & ~(nan_torch | nan_onnx) & (ref != got)
    if inf_mismatch.any():
        problems.append(f"{int(inf_mismatch.sum())} infinite values differ")
    over = diff > allowed
    if over.any():
        k = int(np.argmax(np.where(over, diff / np.maximum(allowed, 1e-300), -1.0)))
        flat_ref, flat_got, flat_allowed = ref.reshape(-1), got.reshape(-1), allowed.reshape(-1)
        out["worst"] = {
            "torch": float(flat_ref[k]),
            "onnx": float(flat_got[k]),
            "allowed": float(flat_allowed[k]),
        }
        out["values_over"] = f"{int(over.sum())} of {over.size}"
    if problems:
        out["problem"] = "; ".join(problems)
    out["passed"] = not problems and not over.any()
    return out


def float64_check(model: nn.Module, batch: Mapping[str, torch.Tensor], ref, got) -> dict:
    """Compare torch float32 (``ref``) and onnxruntime (``got``) with a float64 run of
    ``model``; pass when onnxruntime's error is within :data:`FLOAT64_SLACK` x torch's own."""
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if size > FLOAT64_MAX_BYTES:
        return {"float64": "not checked: model too large for a float64 copy"}
    try:
        exact_model = copy.deepcopy(model).double().eval()
        inputs = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
        with torch.no_grad():
            exact = primary_output(call_model(exact_model, inputs)).detach().double().numpy()
        del exact_model
    except Exception as e:  # a model that cannot run in float64 keeps the plain verdict
        return {"float64": f"not checked: {type(e).__name__}: {first_line(str(e))}"[:200]}
    if exact.shape != ref.shape or not np.isfinite(exact).all():
        return {"float64": "not checked: the float64 run gave another shape or non-finite values"}
    torch_err = float(np.abs(ref - exact).max())
    onnx_err = float(np.abs(got - exact).max())
    passed = onnx_err <= FLOAT64_SLACK * torch_err
    return {
        "float64": {"torch_error": torch_err, "onnx_error": onnx_err},
        "passed": passed,
        **(
            {"passed_by": "float64 reference: within torch's own float32 rounding"}
            if passed
            else {}
        ),
    }


def describe_failure(result: dict[str, Any]) -> str:
    """What differs, per failing batch: NaN/inf mismatches, the value furthest outside its
    tolerance, and torch's own float32 error when the float64 run was made."""
    parts = []
    for c in result["checks"]:
        if c["passed"]:
            continue
        text = c.get("problem") or ""
        if c.get("worst"):
            w = c["worst"]
            text += (", " if text else "") + (
                f"max |diff| {c['max_abs_diff']:.3g} ({c['values_over']} values over "
                f"tolerance; worst: torch {w['torch']:.6g} vs onnxruntime {w['onnx']:.6g}, "
                f"allowed ±{w['allowed']:.3g})"
            )
        f64 = c.get("float64")
        if isinstance(f64, dict):
            text += (
                f"; against float64, onnxruntime is off by {f64['onnx_error']:.3g}, torch "
                f"float32 by {f64['torch_error']:.3g} (allowed {FLOAT64_SLACK:g}x that)"
            )
        elif f64:
            text += f"; float64 {f64}"
        parts.append(f"batch {c['shape']}: {text or 'differs'}")
    return "; ".join(parts) + (
        f" (tolerance atol {result['atol']:g} + rtol {result['rtol']:g} x |torch|)"
    )


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
