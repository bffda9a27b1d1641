"""The plan's data-only sections (model, data, teacher, export, bench, gates): pydantic
models with no behaviour, so every layer can read a plan's settings without importing the
plan package (which composes them with the stages into ``Plan``)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    Field,
    PositiveInt,
    field_validator,
    model_validator,
)

from compressor.spec.base import StrictModel

IMPORT_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")


METRICS = ("accuracy", "top5", "mse", "cosine", "spearman", "perplexity", "next_token_agreement")


def check_import_ref(value: str | None, what: str) -> str | None:
    """Validate the ``package.module:attribute`` form of an import string."""
    if value is not None and not IMPORT_REF.match(value):
        raise ValueError(
            f"{what} must look like 'package.module:function' (a dotted module path, a colon, "
            "then the attribute)"
        )
    return value


class InputSpec(StrictModel):
    """One named model input; ``shape`` is an example shape with the batch first."""

    shape: list[PositiveInt] = Field(min_length=1, description="Example shape, batch first.")
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    low: float | None = Field(None, description="Smallest valid value (synthetic data, checks).")
    high: float | None = Field(
        None, description="Largest valid value; for token ids the vocabulary size (exclusive)."
    )
    dynamic: list[int] | None = Field(
        None,
        description="Axes that vary at run time (ONNX dynamic axes). Default: the batch axis, "
        "plus the sequence axis for integer inputs of rank 2.",
    )

    @model_validator(mode="after")
    def _check_range(self) -> InputSpec:
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.dynamic is not None:
            bad = [a for a in self.dynamic if not 0 <= a < len(self.shape)]
            if bad:
                raise ValueError(
                    f"dynamic axes {bad} are outside the shape's {len(self.shape)} axes"
                )
        return self

    def dynamic_axes(self) -> list[int]:
        if self.dynamic is not None:
            return list(self.dynamic)
        axes = [0]
        if self.dtype in ("int64", "int32") and len(self.shape) == 2:
            axes.append(1)
        return axes


class ModelSpec(StrictModel):
    """Where the model comes from: a checkpoint file (+ architecture) or a Hugging Face folder."""

    checkpoint: str | None = Field(
        None,
        description="Path to .safetensors/.pt/.pth/.bin/.ckpt (state dict or training "
        "checkpoint), a compress output, a TorchScript .pt or an .onnx file (bench only).",
    )
    architecture: str | None = Field(
        None, description="'package.module:factory' that builds the nn.Module for a state dict."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Arguments of the factory.")
    hf: str | None = Field(None, description="A Hugging Face model folder (offline).")
    task: Literal["auto", "embedding", "classification", "causal-lm", "base"] = Field(
        "auto", description="For Hugging Face models: what the model's output is."
    )
    tokenizer: str | None = Field(
        None,
        description="Tokenizer folder or tokenizer.json for text data (default: the hf folder).",
    )
    state_dict_key: str | None = Field(
        None, description="Key of the state dict inside a training checkpoint (found if omitted)."
    )
    trust_pickle: bool = Field(
        False,
        description="Allow unpickling a whole pickled nn.Module. Unpickling runs code from the "
        "file: only for files you trust.",
    )
    inputs: dict[str, InputSpec] = Field(
        default_factory=dict, description="Named example inputs, in forward() argument order."
    )

    _check_arch = field_validator("architecture")(
        lambda v: check_import_ref(v, "model.architecture")
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.checkpoint is None) == (self.hf is None):
            raise ValueError("give exactly one of 'checkpoint' (a file) or 'hf' (a model folder)")
        return self


class DataSpec(StrictModel):
    """Data sources: 'builtin:digits?split=train', a tensors file, a text/JSONL/CSV file, or
    'package.module:function' returning a Dataset or DataLoader."""

    train: str | None = None
    eval: str | None = None
    calibration: str | None = Field(None, description="Default: the training data.")
    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt | None = None
    metric: Literal[METRICS] | None = Field(  # type: ignore[valid-type]
        None, description="Default: accuracy with labels, cosine (to the teacher) without."
    )
    also_metrics: list[Literal[METRICS]] = Field(  # type: ignore[valid-type]
        default_factory=list,
        description="More metrics to report before and after (e.g. [spearman] beside cosine), "
        "computed from the same evaluation outputs; gates use `metric`.",
    )
    label_names: list[str] | None = Field(
        None, description="Class names in index order, when text data labels are strings."
    )
    num_workers: int = Field(0, ge=0)


class TeacherSpec(ModelSpec):
    """A teacher checkpoint (same input/output space as the student)."""


# export.onnx.quantize kind -> the name reports and gates give that copy.
QUANTIZED_LABELS = {"dynamic": "int8", "static": "int8-static", "fp16": "fp16"}


class OnnxSpec(StrictModel):
    opset: int = Field(18, ge=14, le=23)
    exporter: Literal["auto", "dynamo", "legacy"] = Field(
        "auto", description="auto: the torch.export-based exporter, falling back to the legacy one."
    )
    with_past_exporter: Literal["legacy", "dynamo", "auto"] = Field(
        "legacy",
        description="Exporter of a causal LM's decoder_with_past.onnx. legacy exports in "
        "seconds; dynamo takes about 30 s more for the tiny Llama but its graph has a third "
        "of the nodes (347 vs 1,112) and prefilled 1.45x faster in onnxruntime (9.8 vs "
        "14.2 ms, 1 x 128 tokens); auto: dynamo, falling back to legacy.",
    )
    verify: bool = True
    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-4, ge=0)
    optimize: bool = Field(False, description="Also write an onnxruntime-optimised model.")
    quantize: list[Literal["dynamic", "static", "fp16"]] = Field(
        default_factory=list,
        description="Also write lower-precision copies, each measured (metric, latency, size): "
        "dynamic (int8 weights, activations quantised at run time), static (int8 QDQ, "
        "calibrated on the plan's calibration data), fp16; true means [dynamic].",
    )
    calibration_batches: PositiveInt = Field(
        8, description="Batches of calibration data that set static int8 activation ranges."
    )
    external_data: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: external data only for models over 2 GB."
    )

    @field_validator("quantize", mode="before")
    @classmethod
    def _quantize_flag(cls, value: Any) -> Any:
        # quantize: true (the original flag) is the dynamic int8 copy it always was.
        if isinstance(value, bool):
            return ["dynamic"] if value else []
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("quantize")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class ExportSpec(StrictModel):
    dir: str | None = Field(None, description="Output directory (default: out/<plan name>).")
    formats: list[Literal["safetensors", "onnx", "hf"]] = Field(
        default_factory=lambda: ["safetensors", "onnx"]
    )
    onnx: OnnxSpec = Field(default_factory=OnnxSpec)


class GenerationBenchOptions(StrictModel):
    """Generation speed of causal LMs (prefill and decode with the KV cache)."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="auto: measured when the model is a causal LM."
    )
    prefill: list[str] = Field(
        default_factory=lambda: ["1x128"],
        description="Prefill shapes as BATCHxPROMPT_LENGTH (one forward from an empty cache).",
    )
    decode_batch: PositiveInt = 1
    prompt_len: PositiveInt = Field(32, description="Prompt length before decoding.")
    new_tokens: PositiveInt = Field(32, description="Tokens decoded one at a time, greedy.")

    @field_validator("prefill")
    @classmethod
    def _shapes(cls, value: list[str]) -> list[str]:
        for text in value:
            batch, sep, length = text.lower().partition("x")
            if not sep or not batch.isdigit() or not length.isdigit() or "0" in (batch, length):
                raise ValueError(f"prefill shape {text!r} must be BATCHxLENGTH, e.g. 1x128")
        if not value:
            raise ValueError("give at least one prefill shape, e.g. [1x128]")
        return value

    def shapes(self) -> tuple[tuple[int, int], ...]:
        return tuple(tuple(int(n) for n in t.lower().split("x")) for t in self.prefill)  # type: ignore[misc]


class BenchSpec(StrictModel):
    enabled: bool = True
    runtimes: list[Literal["onnxruntime", "torch"]] = Field(
        default_factory=lambda: ["onnxruntime", "torch"], min_length=1
    )
    devices: list[Literal["cpu", "cuda"]] = Field(default_factory=lambda: ["cpu"], min_length=1)
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 32], min_length=1)
    seq_lengths: list[PositiveInt] | None = None
    warmup: int = Field(3, ge=0)
    rounds: PositiveInt = Field(5, description="Interleaved rounds across the models.")
    iterations: PositiveInt = Field(10, description="Timed calls per model per round.")
    threads: PositiveInt | None = Field(None, description="Default: the machine's physical cores.")
    budget_s: float | None = Field(
        30.0,
        gt=0,
        description="Seconds per runtime/device/shape: when calls are slow, fewer "
        "timed calls per round (at least one; the report shows how many were taken).",
    )
    memory: bool = Field(
        True, description="Measure peak memory (a fresh process per model and runtime)."
    )
    generation: GenerationBenchOptions = Field(
        default_factory=GenerationBenchOptions,
        description="Causal LMs: prefill latency, decode tokens/s with the KV cache and "
        "KV-cache bytes per token, original vs compressed, timed interleaved.",
    )


class GatesSpec(StrictModel):
    artifact: Literal["compressed", "int8", "int8-static", "fp16"] = Field(
        "compressed",
        description="Which model the gates judge: the compressed model, or one of its "
        "lower-precision ONNX copies (export.onnx.quantize: dynamic -> int8, static -> "
        "int8-static, fp16).",
    )
    max_metric_drop: float | None = Field(None, ge=0, description="In metric units (0.01 = 1 pt).")
    min_metric: float | None = None
    min_speedup: float | None = Field(None, gt=0)
    max_size_ratio: float | None = Field(None, gt=0)
    max_params_ratio: float | None = Field(None, gt=0)
    max_macs_ratio: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)
    min_decode_speedup: float | None = Field(
        None, gt=0, description="Causal LMs: decode tokens/s, compressed / original."
    )
    max_prefill_ratio: float | None = Field(
        None, gt=0, description="Causal LMs: prefill latency, compressed / original."
    )
