"""Pydantic models of a compression plan (``plan.yaml``).

Every field has a default where a sensible one exists; unknown keys are errors. The
``stages:`` list is a discriminated union over the stage registry: each entry is a mapping
with exactly one key, the stage name (``- prune: {amount: 0.5}``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    create_model,
    field_validator,
    model_validator,
)

import compressor.stages  # noqa: F401  (registers the built-in stages)
from compressor.config_base import StrictModel
from compressor.stages.registry import StageConfig, stage_defs

PLAN_VERSION = 1
IMPORT_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")
METRICS = ("accuracy", "top5", "mse", "cosine", "spearman")


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
    task: Literal["auto", "embedding", "classification", "base"] = Field(
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


class OnnxSpec(StrictModel):
    opset: int = Field(18, ge=14, le=23)
    exporter: Literal["auto", "dynamo", "legacy"] = Field(
        "auto", description="auto: the torch.export-based exporter, falling back to the legacy one."
    )
    verify: bool = True
    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-4, ge=0)
    optimize: bool = Field(False, description="Also write an onnxruntime-optimised model.")
    quantize: bool = Field(False, description="Also write an int8 dynamically quantised model.")
    external_data: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: external data only for models over 2 GB."
    )


class ExportSpec(StrictModel):
    dir: str | None = Field(None, description="Output directory (default: out/<plan name>).")
    formats: list[Literal["safetensors", "onnx", "hf"]] = Field(
        default_factory=lambda: ["safetensors", "onnx"]
    )
    onnx: OnnxSpec = Field(default_factory=OnnxSpec)


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


class GatesSpec(StrictModel):
    max_metric_drop: float | None = Field(None, ge=0, description="In metric units (0.01 = 1 pt).")
    min_metric: float | None = None
    min_speedup: float | None = Field(None, gt=0)
    max_size_ratio: float | None = Field(None, gt=0)
    max_params_ratio: float | None = Field(None, gt=0)
    max_macs_ratio: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)


def _null_stage_is_defaults(value: Any) -> Any:
    # `- finetune:` (no mapping) means "finetune with defaults".
    if isinstance(value, dict) and len(value) == 1:
        ((key, cfg),) = value.items()
        if cfg is None:
            return {key: {}}
    return value


def _stage_tag(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return key if key in stage_defs() else None
    if isinstance(value, StrictModel):
        return getattr(value, "stage_name", None)
    return None


class _StageEntry(StrictModel):
    """One `stages:` entry; `name` and `config` hide which stage field is set."""

    @property
    def name(self) -> str:
        return next(iter(type(self).model_fields))

    @property
    def config(self) -> StageConfig:
        return getattr(self, self.name)


def _build_stage_union() -> Any:
    members = []
    for name, d in stage_defs().items():
        entry = create_model(
            f"{name.title().replace('-', '')}Stage",
            __base__=_StageEntry,
            __doc__=d.summary,
            **{name: (d.config, ...)},
        )
        entry.stage_name = name
        members.append(Annotated[entry, Tag(name)])
    names = ", ".join(stage_defs())
    union = Annotated[
        Union[tuple(members)],
        Discriminator(
            _stage_tag,
            custom_error_type="invalid_stage",
            custom_error_message=f"each stage is a mapping with exactly one key, one of: {names}",
        ),
    ]
    return Annotated[union, BeforeValidator(_null_stage_is_defaults)]


StageEntry = _build_stage_union()


class Plan(StrictModel):
    """A compression plan: model -> stages -> export -> bench -> gates."""

    version: Literal[1] = PLAN_VERSION
    name: str | None = Field(None, description="Run name (default: the plan file's name).")
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    safe: bool = Field(
        False, description="Refuse 'module:function' imports and pickles (CI on untrusted plans)."
    )
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    teacher: Literal["original", "none"] | TeacherSpec = "original"
    stages: list[StageEntry] = Field(default_factory=list)  # type: ignore[valid-type]
    export: ExportSpec = Field(default_factory=ExportSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    gates: GatesSpec = Field(default_factory=GatesSpec)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, data: Any) -> Any:
        # `gates:` followed only by comments parses as null: it means "the defaults".
        if isinstance(data, dict):
            for key in ("data", "export", "bench", "gates"):
                if key in data and data[key] is None:
                    data = {**data, key: {}}
            if data.get("stages", []) is None:
                data = {**data, "stages": []}
        return data

    def stage_list(self) -> list[tuple[str, StageConfig]]:
        """The stages as ``(name, config)`` pairs, in order."""
        return [(entry.name, entry.config) for entry in self.stages]
