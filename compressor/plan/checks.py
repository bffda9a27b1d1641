"""Checks beyond the schema, done before any weights load: files exist, each stage's needs
(data, labels, a teacher, inputs), stage-registered plan checks, gates that can be
measured, and in safe mode the imports and pickles the run would refuse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compressor.data.sources import parse_source
from compressor.errors import CompressError
from compressor.formats.loading import resolve_path
from compressor.plan.messages import dotted_path
from compressor.plan.parse import SourceMap
from compressor.safe_import import is_import_allowed
from compressor.spec.base import (
    CALIBRATION_DATA,
    EVAL_DATA,
    EXAMPLE_INPUTS,
    LABELS,
    TEACHER,
    TRAIN_DATA,
)
from compressor.spec.sections import QUANTIZED_LABELS
from compressor.stages.registry import stage_defs


@dataclass
class LoadedPlan:
    plan: Any  # compressor.plan.schema.Plan
    path: Path
    source: SourceMap

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def raw_file_checks(data: dict, smap: SourceMap, base: Path) -> list[str]:
    """File checks on the raw plan, so a schema error does not hide a missing file."""

    problems = []
    for section in ("model", "teacher"):
        spec = data.get(section)
        if not isinstance(spec, dict):
            continue
        for key in ("checkpoint", "hf"):
            value = spec.get(key)
            if isinstance(value, str):
                loc = (section, key)
                try:
                    path = resolve_path(value, base)
                except CompressError as e:  # package:NAME that is not installed
                    problems.append(f"{smap.where(loc)}: {dotted_path(loc)}: {e.message}; {e.hint}")
                    continue
                if not path.exists():
                    problems.append(f"{smap.where(loc)}: {dotted_path(loc)}: {path} does not exist")
    return problems


def check_plan(
    loaded: LoadedPlan, *, check_files: bool = True, allowed_imports: list[str] | None = None
) -> list[str]:
    """Checks beyond the schema, done before any weights load: files exist, stages' needs,
    and in safe mode the pickles and imports the run would refuse."""

    plan, smap, base = loaded.plan, loaded.source, loaded.base_dir
    problems: list[str] = []

    def add(loc: tuple, message: str) -> None:
        problems.append(f"{smap.where(loc)}: {dotted_path(loc)}: {message}")

    def check_model(spec: Any, loc: tuple) -> None:
        if spec.checkpoint is not None:
            path = resolve_path(spec.checkpoint, base)
            if check_files and not path.is_file():
                add((*loc, "checkpoint"), f"{path} does not exist")
            bench_only = path.suffix.lower() == ".onnx"
            if bench_only and plan.stages and loc == ("model",):
                add(
                    (*loc, "checkpoint"),
                    "an .onnx file can be benchmarked but not compressed; "
                    "give the PyTorch checkpoint",
                )
        if spec.hf is not None:
            try:
                path = resolve_path(spec.hf, base)
            except CompressError as e:
                add((*loc, "hf"), f"{e.message}; {e.hint}" if e.hint else e.message)
                return
            if check_files and not (path / "config.json").is_file():
                add((*loc, "hf"), f"{path} is not a Hugging Face model folder (no config.json)")

    def check_safe(spec: Any, loc: tuple) -> None:
        if spec.trust_pickle:
            add(
                (*loc, "trust_pickle"),
                "safe mode refuses unpickling (it runs code stored in "
                "the file); give a state dict (.safetensors) instead",
            )
        if spec.architecture:
            module = spec.architecture.partition(":")[0]
            if not is_import_allowed(module, allowed_imports):
                top = module.split(".")[0]
                add(
                    (*loc, "architecture"),
                    f"safe mode refuses importing {module!r} (importing "
                    f"runs its code); allow it with --allow-import {top}",
                )

    check_model(plan.model, ("model",))
    if not isinstance(plan.teacher, str):
        check_model(plan.teacher, ("teacher",))
    if plan.safe:
        check_safe(plan.model, ("model",))
        if not isinstance(plan.teacher, str):
            check_safe(plan.teacher, ("teacher",))

    for key in ("train", "eval", "calibration"):
        source = getattr(plan.data, key)
        if source is None:
            continue
        try:
            ref = parse_source(source, base)
        except CompressError as e:
            add(("data", key), e.message + (f" ({e.hint})" if e.hint else ""))
            continue
        if check_files and ref.kind in ("tensors", "text") and not Path(ref.target).is_file():
            add(("data", key), f"file {ref.target} does not exist")
        module = ref.target.partition(":")[0]
        if ref.kind == "callable" and plan.safe and not is_import_allowed(module, allowed_imports):
            add(
                ("data", key),
                f"safe mode refuses the 'module:function' data source {source!r} "
                f"(it runs code); allow it with --allow-import {module.split('.')[0]}",
            )

    has_inputs = bool(plan.model.inputs) or plan.model.hf is not None
    compressed_input = plan.model.checkpoint is not None and str(plan.model.checkpoint).endswith(
        ".safetensors"
    )
    for index, (name, cfg) in enumerate(plan.stage_list()):
        loc = ("stages", index, name)
        needs = cfg.requirements()
        if EXAMPLE_INPUTS in needs and not has_inputs and not compressed_input:
            add(
                loc,
                f"the {name} stage needs example inputs: give model.inputs "
                "(name: {shape: [...], dtype: ...})",
            )
        if TRAIN_DATA in needs and plan.data.train is None:
            add(loc, f"the {name} stage needs training data: set data.train")
        if LABELS in needs and TRAIN_DATA not in needs and plan.data.train is None:
            add(loc, f"the {name} stage needs labelled training data: set data.train")
        if CALIBRATION_DATA in needs and plan.data.calibration is None and plan.data.train is None:
            add(loc, f"the {name} stage needs calibration data: set data.calibration or data.train")
        if EVAL_DATA in needs and plan.data.eval is None:
            add(loc, f"the {name} stage needs evaluation data: set data.eval")
        if TEACHER in needs and plan.teacher == "none":
            add(loc, f"the {name} stage needs a teacher: set teacher: original or a checkpoint")

    defs = stage_defs()
    for name in dict.fromkeys(name for name, _ in plan.stage_list()):
        check = defs[name].plan_check
        for message in check(plan) if check is not None else []:
            add(("stages",), message)

    gates = plan.gates
    labels = {QUANTIZED_LABELS[k] for k in plan.export.onnx.quantize}
    if gates.artifact != "compressed" and (
        gates.artifact not in labels or "onnx" not in plan.export.formats
    ):
        kind = {v: k for k, v in QUANTIZED_LABELS.items()}[gates.artifact]
        add(
            ("gates", "artifact"),
            f"gates target artifact {gates.artifact!r}, which this plan does not write: add "
            f"{kind} to export.onnx.quantize (and onnx to export.formats)",
        )
    if (
        "static" in plan.export.onnx.quantize
        and plan.data.calibration is None
        and (plan.data.train is None)
    ):
        add(
            ("export", "onnx", "quantize"),
            "static int8 quantisation calibrates on data: set data.calibration or data.train",
        )
    if (
        gates.max_metric_drop is not None or gates.min_metric is not None
    ) and plan.data.eval is None:
        add(("gates",), "metric gates need evaluation data: set data.eval")
    timed = ("min_speedup", "max_latency_ms", "min_decode_speedup", "max_prefill_ratio")
    if any(getattr(gates, g) is not None for g in timed) and not plan.bench.enabled:
        add(("gates",), "latency gates need bench.enabled: true")
    generation = ("min_decode_speedup", "max_prefill_ratio")
    if any(getattr(gates, g) is not None for g in generation) and (
        plan.bench.generation.enabled is False
    ):
        add(("gates",), "generation gates need bench.generation.enabled: true (or auto)")
    if plan.device == "cuda":
        pass  # checked when the run starts (the device may be on another machine than validate)
    return problems
