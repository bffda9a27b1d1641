"""Export a compacted model: ``model.safetensors`` (reloadable without pickle), a verified
``model.onnx`` and, on request, onnxruntime-optimised and int8 copies; ``load`` reads them
back.

Artifacts (names inside the output directory):

* ``model.safetensors`` - dense tensors, tied tensors once, metadata (``compressor.artifacts``);
* ``model.onnx`` (+ ``model.onnx.data`` with external data) - verified against torch;
* ``model.optimized.onnx`` - onnxruntime graph optimisations applied (``onnx.optimize``);
* ``model.int8.onnx`` - int8 dynamic quantisation (``onnx.quantize``);
* ``hf/`` - a Hugging Face folder (``formats: [hf]``, Hugging Face models only).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compressor.errors import CheckpointError, DataError, ExportError, PlanError

SAFETENSORS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"  # the rewritten tokenizer, after vocabulary pruning
ONNX_NAME = "model.onnx"
OPTIMIZED_NAME = "model.optimized.onnx"
INT8_NAME = "model.int8.onnx"


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
        _hf_writer()


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
    from compressor.hf import write_tokenizer_files

    files = write_tokenizer_files(model, folder)
    return {
        "path": str(folder),
        "size_bytes": sum((folder / name).stat().st_size for name in files),
        "files": files,
    }


def export_safetensors(model: nn.Module, ctx: Any, path: Path, manifest: list) -> dict[str, Any]:
    """``model.safetensors`` with the metadata ``load`` needs (see ``compressor.artifacts``)."""
    from compressor.artifacts import save_compressed

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


def export_onnx_artifacts(model: nn.Module, ctx: Any, out: Path) -> dict[str, Any]:
    """``model.onnx`` (verified), plus the optimised and int8 copies when asked."""
    from compressor.onnx_export import (
        compare,
        dynamic_axes_for,
        export_onnx,
        has_sequence_axis,
        verification_inputs,
    )

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
            from compressor.onnx_export import describe_failure

            (out / OPTIMIZED_NAME).unlink(missing_ok=True)
            raise ExportError(
                f"{OPTIMIZED_NAME} differs from torch at {describe_failure(opt['verification'])}",
                hint="set export.onnx.optimize: false (model.onnx itself passed)",
            )
        artifacts["onnx_optimized"] = opt
    if spec.quantize:
        q = quantize_onnx(out / ONNX_NAME, out / INT8_NAME, external=info["external_data"])
        # int8 changes the numbers by design: the difference is reported, never gated.
        diff = compare(model, out / INT8_NAME, checks, atol=0.0, rtol=0.0, seq=seq)
        q["max_abs_diff"] = diff["max_abs_diff"]
        artifacts["onnx_int8"] = q
    return artifacts


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


def _hf_writer() -> Any:
    try:
        from compressor.hf_export import save_hf_folder
    except ImportError:  # transformers is an optional extra
        raise PlanError(
            "export format 'hf' (a Hugging Face model folder) needs the transformers package",
            hint="pip install 'compress[hf]', or remove 'hf' from export.formats",
        ) from None
    return save_hf_folder


def _export_hf(model: nn.Module, ctx: Any, folder: Path) -> dict[str, Any]:
    _hf_writer()(model, folder, ctx)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"path": str(folder), "size_bytes": size}


def reference_sizes(ctx: Any, model: nn.Module | None = None) -> dict[str, int]:
    """Bytes on disk of the original: its checkpoint as given, and the same safetensors
    writer's output (the like-for-like basis of the size ratio)."""
    from compressor.artifacts import save_compressed

    model = model if model is not None else ctx.original
    sizes: dict[str, int] = {}
    path = Path(ctx.loaded.path)
    if path.is_file():
        sizes["checkpoint"] = path.stat().st_size
    elif path.is_dir():
        sizes["checkpoint"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    if model is None:
        return sizes
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / SAFETENSORS_NAME
        if ctx.loaded.architecture is not None:
            saved = save_compressed(
                model, target, architecture=ctx.loaded.architecture, manifest=[]
            )
            sizes["safetensors"] = saved.size_bytes
        else:
            sizes["safetensors"] = plain_safetensors_size(model, target)
    return sizes


def plain_safetensors_size(model: nn.Module, target: Path) -> int:
    from safetensors.torch import save_file

    from compressor.artifacts import dedupe_state

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    unique, _ = dedupe_state(state)
    save_file(unique, str(target))
    return target.stat().st_size


def first_line(text: str) -> str:
    """The line of an error message that names its cause."""
    # torch.export errors are long; their "Exception summary" line is what names the cause.
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    start = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("## Exception summary")), 0)
    if start >= len(lines):
        return "no details"
    found = lines[start]
    if found.endswith(":") and start + 1 < len(lines):  # "...were found:" + the first one
        found += " " + lines[start + 1]
    return found[:400]


# ------------------------------------------------------------------ onnx options


def optimize_onnx(src: Path, dst: Path, *, external: bool) -> dict[str, Any]:
    """Write onnxruntime's graph-optimised model (extended level: portable across CPUs)."""
    import onnxruntime as ort

    from compressor.onnx_export import artifact_size, publish, staging_dir

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
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from compressor.onnx_export import artifact_size, publish, staging_dir

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


# ------------------------------------------------------------------ onnxruntime


def ort_session(
    path: Path | str, *, device: str = "cpu", threads: int | None = None, optimization: str = "all"
) -> Any:
    """An onnxruntime session on ``device`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
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


def load(
    path: Path | str,
    *,
    safe: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    architecture: Any = None,
) -> Any:
    """Load an artifact compress wrote.

    Args:
        path: a compress ``model.safetensors`` (-> the compacted ``nn.Module``, eval mode,
            rebuilt without pickle), a Hugging Face folder compress wrote, or an ``.onnx``
            file (-> ``OnnxModel``: call it with the same named inputs; it returns the first
            output as a torch tensor).
        safe: refuse architecture imports not explicitly allowed.
        device: where the model runs.
        threads: onnxruntime intra-op threads (ONNX only).
        architecture: an ``ArchitectureRef`` to build instead of the one the file names.

    Raises:
        CheckpointError: the file is missing, not a compress artifact, or corrupt.
    """
    from compressor.artifacts import is_compressed_file, load_compressed

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist", hint="check the path")
    if path.is_dir() and (path / "config.json").is_file():
        from compressor.hf_export import load_folder

        return load_folder(path).to(device)
    if path.suffix.lower() == ".onnx":
        return OnnxModel(path, device=device, threads=threads)
    if path.suffix.lower() == ".safetensors":
        if not is_compressed_file(path):
            raise CheckpointError(
                f"{path} is not a compress model file (no compress metadata)",
                hint="a plain state dict needs its architecture: use compressor.checkpoint."
                "load_model or a plan with model.architecture",
            )
        model = load_compressed(path, safe=safe, architecture=architecture).model
        return model.to(device)
    raise CheckpointError(
        f"{path}: compressor.load reads a compress model.safetensors or an .onnx file, not "
        f"{path.suffix or 'a file without extension'}",
    )
