"""Export a compacted model: ``model.safetensors`` (reloadable without pickle), a verified
``model.onnx`` and, on request, onnxruntime-optimised and int8 copies; ``load`` reads them
back.

Artifacts (names inside the output directory):

* ``model.safetensors`` - dense tensors, tied tensors once, metadata (``compressor.artifacts``);
* ``model.onnx`` (+ ``model.onnx.data`` with external data) - verified against torch;
* ``model.optimized.onnx`` - onnxruntime graph optimisations applied (``onnx.optimize``);
* ``model.int8.onnx``, ``model.int8-static.onnx``, ``model.fp16.onnx`` - dynamic int8, static
  int8 (QDQ, calibrated) and fp16 copies (``onnx.quantize: [dynamic, static, fp16]``);
* ``hf/`` - a Hugging Face folder (``formats: [hf]``, Hugging Face models only)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import CheckpointError, ExportError, PlanError
from compressor.formats.compacted import save_compressed
from compressor.formats.hf.model import HFModel
from compressor.formats.hf.save import save_hf_folder
from compressor.formats.hf.tokenizer import write_tokenizer_files
from compressor.formats.onnx.decoder import export_decoder_onnx
from compressor.formats.onnx.export import (
    compare,
    describe_failure,
    dynamic_axes_for,
    export_onnx,
    has_sequence_axis,
    verification_inputs,
)
from compressor.formats.onnx.optimize import optimize_onnx
from compressor.formats.onnx.quantize import ARTIFACT_KEYS as QUANT_KEYS
from compressor.formats.onnx.quantize import FILE_NAMES as QUANT_FILES
from compressor.formats.onnx.quantize import (
    convert_fp16,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from compressor.formats.sizes import SAFETENSORS_NAME

TOKENIZER_DIR = "tokenizer"  # the rewritten tokenizer, after vocabulary pruning


ONNX_NAME = "model.onnx"
OPTIMIZED_NAME = "model.optimized.onnx"
# Causal LMs: the decoder with past key/values, for generation (model.onnx has no cache).
DECODER_ONNX_NAME = "decoder_with_past.onnx"


def check_formats(ctx: Any, formats: list[str]) -> None:
    """Refuse impossible requests before anything is written."""
    arch = ctx.loaded.architecture
    if "safetensors" in formats and arch is None:
        raise CheckpointError(
            f"{ctx.loaded.path} was loaded as a {ctx.loaded.kind.replace('_', ' ')}, so compress "
            "has no architecture reference (factory or Hugging Face config) to rebuild the "
            "compacted model from; a model.safetensors without one could not be loaded back",
            hint="give a state-dict checkpoint plus model.architecture: 'package.module:factory'"
            ", or export only onnx (export.formats: [onnx])",
        )
    if "hf" in formats and (arch is None or arch.kind != "hf"):
        built = f"from {arch.ref}" if arch is not None and arch.ref else "without a config"
        raise PlanError(
            "export format 'hf' writes a Hugging Face model folder, which needs a Hugging Face "
            f"model (model.hf); this model was built {built}",
            hint="remove 'hf' from export.formats (safetensors and onnx work for any model)",
        )
    if "hf" in formats:
        _require_transformers()


def export_model(model: nn.Module, ctx: Any, out: Path, manifest: list) -> dict[str, Any]:
    """Write the artifacts ``ctx.plan.export`` asks for into ``out``.

    Args:
        model: the compacted model (eval mode).
        ctx: the run's ``RunContext``.
        out: the output directory.
        manifest: structure ops that turn the original architecture into ``model``.

    Returns:
        ``{kind: details}`` for every artifact written (kinds: safetensors, onnx,
        onnx_optimized, onnx_int8, hf); each has ``path`` and ``size_bytes``.

    Raises:
        CheckpointError / PlanError: a format cannot be written for this model (exit 2).
        ExportError: writing or ONNX verification failed (exit 3).
    """
    spec = ctx.plan.export
    formats = list(dict.fromkeys(spec.formats))
    check_formats(ctx, formats)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, Any] = {}
    try:
        if "safetensors" in formats:
            artifacts["safetensors"] = export_safetensors(
                model, ctx, out / SAFETENSORS_NAME, manifest
            )
        if "onnx" in formats:
            artifacts.update(export_onnx_artifacts(model, ctx, out))
        if "hf" in formats:
            artifacts["hf"] = _export_hf(model, ctx, out / "hf")
        tokenizer = export_rewritten_tokenizer(model, out / TOKENIZER_DIR)
        if tokenizer is not None:
            artifacts["tokenizer"] = tokenizer
    except BaseException:
        # A failed export leaves no artifact of this run behind, not a partial set.
        for art in artifacts.values():
            path = Path(art["path"])
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file():
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".data").unlink(missing_ok=True)
        raise
    return artifacts


def export_rewritten_tokenizer(model: nn.Module, folder: Path) -> dict[str, Any] | None:
    """After vocabulary pruning the exported model reads NEW token ids: write the rewritten
    tokenizer beside it (``tokenizer/``), since the original's tokenizer would feed it ids it
    no longer has. None when the vocabulary is unchanged."""
    if not getattr(model, "tokenizer_json", None):
        return None

    files = write_tokenizer_files(model, folder)
    return {
        "path": str(folder),
        "size_bytes": sum((folder / name).stat().st_size for name in files),
        "files": files,
    }


def export_safetensors(model: nn.Module, ctx: Any, path: Path, manifest: list) -> dict[str, Any]:
    """``model.safetensors`` with the metadata ``load`` needs (see ``compressor.artifacts``)."""

    saved = save_compressed(
        model,
        path,
        architecture=ctx.loaded.architecture,
        manifest=manifest,
        inputs={n: s.model_dump(mode="json") for n, s in ctx.loaded.input_specs.items()},
        history=ctx.history,
        plan=ctx.plan.model_dump(mode="json"),
    )
    return {
        "path": str(path),
        "size_bytes": saved.size_bytes,
        "tied_aliases": saved.aliases,
        "codebook_encoded": sorted(saved.encoded),
        "manifest_ops": len(manifest),
    }


def causal_lm_of(model: nn.Module) -> nn.Module | None:
    """The transformers ``*ForCausalLM`` inside a causal-LM model, else None."""
    if isinstance(model, HFModel) and model.task == "causal-lm":
        return model.model
    return None


def export_onnx_artifacts(model: nn.Module, ctx: Any, out: Path) -> dict[str, Any]:
    """``model.onnx`` (verified), plus the optimised and int8 copies when asked."""

    spec = ctx.plan.export.onnx
    example = {k: v.detach().cpu() for k, v in ctx.example_inputs().items()}
    example = _at_least_rows(ctx, example, 5)
    info = export_onnx(model, example, out / ONNX_NAME, spec, specs=ctx.loaded.input_specs)
    artifacts: dict[str, Any] = {"onnx": info}
    axes = dynamic_axes_for(example, ctx.loaded.input_specs)
    checks = verification_inputs(example, axes)
    seq = has_sequence_axis(axes, example)
    if spec.optimize:
        opt = optimize_onnx(out / ONNX_NAME, out / OPTIMIZED_NAME, external=info["external_data"])
        opt["verification"] = compare(
            model, out / OPTIMIZED_NAME, checks, atol=spec.atol, rtol=spec.rtol, seq=seq
        )
        if spec.verify and not opt["verification"]["passed"]:
            (out / OPTIMIZED_NAME).unlink(missing_ok=True)
            raise ExportError(
                f"{OPTIMIZED_NAME} differs from torch at {describe_failure(opt['verification'])}",
                hint="set export.onnx.optimize: false (model.onnx itself passed)",
            )
        artifacts["onnx_optimized"] = opt
    lm = causal_lm_of(model)
    if lm is not None:
        # A language model is deployed for generation: also the decoder with past key/values
        # (Optimum / onnxruntime-genai names), verified at prefill and over decode steps.
        artifacts["onnx_with_past"] = export_decoder_onnx(
            lm,
            out / DECODER_ONNX_NAME,
            exporter=spec.with_past_exporter,
            atol=max(spec.atol, 1e-4),
            verify=spec.verify,
        )
    for kind in spec.quantize:
        artifacts[QUANT_KEYS[kind]] = _quantized(kind, model, ctx, out, info, checks, seq)
    return artifacts


def _calibration_batches(ctx: Any, count: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` batches of the plan's calibration data (train when it has none)."""
    data = getattr(ctx, "data", None)
    if data is None or not data.has("calibration"):
        return []
    return [dict(b.inputs) for b in data.batches("calibration", count)]


def _quantized(
    kind: str, model: nn.Module, ctx: Any, out: Path, info: dict, checks: Any, seq: bool
) -> dict[str, Any]:
    """One lower-precision copy of ``model.onnx`` and its largest difference from torch."""
    src, dst, external = out / ONNX_NAME, out / QUANT_FILES[kind], info["external_data"]
    if kind == "dynamic":
        q = quantize_dynamic_int8(src, dst, external=external)
    elif kind == "static":
        batches = _calibration_batches(ctx, ctx.plan.export.onnx.calibration_batches)
        q = quantize_static_int8(src, dst, batches, external=external)
    else:
        q = convert_fp16(src, dst, external=external)
    # Lower precision changes the numbers by design: the difference is reported; the run's
    # metric on the artifact (and any gate on it) says whether it still does the job.
    q["max_abs_diff"] = compare(model, dst, checks, atol=0.0, rtol=0.0, seq=seq)["max_abs_diff"]
    return q


def _at_least_rows(ctx: Any, example: dict[str, torch.Tensor], rows: int):
    # Verification wants distinct real rows at its larger batch, not one row repeated.
    first = next(iter(example.values()))
    if first.shape[0] >= rows:
        return example
    try:
        more = ctx.example_inputs(rows)
    except Exception:  # synthetic specs or tiny data: repeating rows is still a valid check
        return example
    return {k: v.detach().cpu() for k, v in more.items()}


def _require_transformers() -> None:
    if importlib.util.find_spec("transformers") is None:  # an optional extra
        raise PlanError(
            "export format 'hf' (a Hugging Face model folder) needs the transformers package",
            hint="pip install 'compress[hf]', or remove 'hf' from export.formats",
        )


def _export_hf(model: nn.Module, ctx: Any, folder: Path) -> dict[str, Any]:
    _require_transformers()
    info = save_hf_folder(model, folder, ctx)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"path": str(folder), "size_bytes": size, "loads_with": info.get("loads_with")}
