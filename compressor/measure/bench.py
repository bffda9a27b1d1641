"""Size, MACs, peak memory, latency and the metric of several models, measured alike.

``bench_run`` measures a run's original and compacted models (the original is exported to
ONNX in a temporary folder so both are timed in onnxruntime). ``bench_paths`` (``compress
bench``) measures any mix of plans, checkpoints, compress files and ONNX files. Both go
through ``measure``: memory probes first (fresh processes, so they cannot disturb the timing),
then per runtime / device / batch (/ sequence length) one interleaved timing of all models.
"""

from __future__ import annotations

import datetime
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
from pydantic import ValidationError

from compressor.counting import model_facts
from compressor.data.bundle import DataBundle
from compressor.errors import PlanError
from compressor.formats.compacted import is_compressed_file
from compressor.formats.export import causal_lm_of
from compressor.formats.loading import example_inputs, load_model
from compressor.formats.onnx.decoder import export_decoder_onnx
from compressor.formats.onnx.export import artifact_size, export_onnx, onnx_input_specs
from compressor.formats.onnx.quantize import ARTIFACT_KEYS as QUANT_KEYS
from compressor.formats.onnx.session import OnnxModel
from compressor.forward import primary_output, resize_batch
from compressor.measure.inspect import parse_input_option
from compressor.measure.latency import Subject, measure
from compressor.measure.lm import GenerationBenchSpec, generation_ratios, measure_generation
from compressor.measure.metrics import compute_metric, get_metric
from compressor.measure.report import compute_ratios
from compressor.plan.load import load_plan
from compressor.spec.sections import (
    QUANTIZED_LABELS,
    BenchSpec,
    DataSpec,
    InputSpec,
    ModelSpec,
    OnnxSpec,
)
from compressor.version import __version__

BENCH_SCHEMA_VERSION = 1


# ------------------------------------------------------------------ compress run


def bench_run(
    ctx: Any, original: nn.Module, compressed: nn.Module, artifacts: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Measure a run's original and compressed models per ``ctx.plan.bench``.

    The original is exported to ONNX (same exporter settings, verified) in a temporary folder
    under ``out`` that is removed afterwards; the compressed model's ONNX is ``model.onnx``.

    Returns:
        ``measure``'s result; ``models.original.size_bytes.onnx`` holds the size of the
        original's ONNX export and ``original_onnx`` its export details.
    """

    spec = ctx.plan.bench
    example = {k: v.detach().cpu() for k, v in ctx.example_inputs(max(spec.batch_sizes)).items()}
    orig = Subject("original", ctx.loaded.kind, Path(ctx.loaded.path), torch_model=original)
    comp = Subject("compressed", "compressed", torch_model=compressed)
    if ctx.loaded.kind != "torchscript":
        orig.probes["torch"] = {
            "kind": "plan_model",
            "spec": ctx.plan.model.model_dump(mode="json"),
            "base_dir": str(Path(ctx.base_dir).resolve()),
        }
    if "safetensors" in artifacts:
        comp.probes["torch"] = {
            "kind": "compressed",
            "path": str(Path(artifacts["safetensors"]["path"]).resolve()),
        }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_spec = ctx.plan.export.onnx.model_copy(update={"optimize": False, "quantize": False})
    if "onnx" in artifacts:
        # The same exporter as model.onnx, so that both models are timed on alike graphs.
        onnx_spec = onnx_spec.model_copy(update={"exporter": artifacts["onnx"]["exporter"]})
    with tempfile.TemporaryDirectory(prefix=".bench-", dir=out) as tmp:
        if "onnxruntime" in spec.runtimes:
            ctx.log("[dim]bench: exporting the original to ONNX for onnxruntime timing[/]")
            orig.onnx_export = export_onnx(
                original,
                example,
                Path(tmp) / "original.onnx",
                onnx_spec,
                specs=ctx.loaded.input_specs,
            )
            orig.onnx_path = Path(orig.onnx_export["path"])
            if "onnx" in artifacts:
                comp.onnx_path = Path(artifacts["onnx"]["path"])
            else:
                comp.onnx_export = export_onnx(
                    compressed,
                    example,
                    Path(tmp) / "compressed.onnx",
                    onnx_spec,
                    specs=ctx.loaded.input_specs,
                )
                comp.onnx_path = Path(comp.onnx_export["path"])
            orig.probes["onnxruntime"] = {"kind": "onnx", "path": str(orig.onnx_path.resolve())}
            comp.probes["onnxruntime"] = {"kind": "onnx", "path": str(comp.onnx_path.resolve())}
        log = (lambda m: ctx.log(f"[dim]{m}[/]")) if not ctx.quiet else (lambda _m: None)
        subjects = [orig, comp]
        if "onnxruntime" in spec.runtimes:
            subjects += quantized_subjects(artifacts)
        result = measure(subjects, spec, example, log=log, safe=ctx.plan.safe)
        generation = bench_generation(original, compressed, spec, artifacts, Path(tmp), log)
        if generation is not None:
            result["generation"] = generation
    if orig.onnx_export is not None:
        result["models"]["original"]["size_bytes"] = {"onnx": orig.onnx_export["size_bytes"]}
        result["original_onnx"] = {k: v for k, v in orig.onnx_export.items() if k != "path"}
    return result


def quantized_subjects(artifacts: dict[str, Any]) -> list[Subject]:
    """The run's lower-precision ONNX copies (int8, int8-static, fp16) as onnxruntime-only
    subjects, named by their label, timed in the same interleaved rounds as the rest."""
    subjects = []
    for kind, key in QUANT_KEYS.items():
        if key in artifacts:
            path = Path(artifacts[key]["path"])
            s = Subject(QUANTIZED_LABELS[kind], "onnx", path, onnx_path=path)
            s.probes["onnxruntime"] = {"kind": "onnx", "path": str(path.resolve())}
            subjects.append(s)
    return subjects


def bench_generation(
    original: nn.Module,
    compressed: nn.Module,
    spec: Any,
    artifacts: dict[str, Any],
    tmp: Path,
    log: Any,
) -> dict[str, Any] | None:
    """Prefill latency, decode tokens/s and KV bytes per token of a run's two causal LMs
    (None when the model is not one, or ``bench.generation.enabled`` is false).

    onnxruntime times the decoders with past key/values: the compressed model's
    ``decoder_with_past.onnx`` when the run exported it, the original's exported (and
    verified) into ``tmp``. Ratios are compressed / original."""
    options = spec.generation
    lms = {"original": causal_lm_of(original), "compressed": causal_lm_of(compressed)}
    if options.enabled is False or any(m is None for m in lms.values()):
        return None
    gen_spec = _generation_spec(spec)
    runtimes = tuple(r for r in ("torch", "onnxruntime") if r in spec.runtimes)
    onnx_paths: dict[str, Path] = {}
    if "onnxruntime" in runtimes:
        done = artifacts.get("onnx_with_past")
        # The original goes through the exporter that wrote the compressed graph: the two
        # exporters' graphs differ in speed, and the ratio is meant to measure the pruning.
        exporter = done["exporter"] if done else "legacy"
        log(
            "bench: exporting the original's decoder with past key/values for onnxruntime "
            f"({exporter} exporter)"
        )
        onnx_paths["original"] = Path(
            export_decoder_onnx(
                lms["original"], tmp / "original_with_past.onnx", exporter=exporter
            )["path"]
        )
        onnx_paths["compressed"] = Path(
            done["path"]
            if done
            else export_decoder_onnx(
                lms["compressed"], tmp / "compressed_with_past.onnx", exporter=exporter
            )["path"]
        )
    result = measure_generation(lms, gen_spec, onnx_paths=onnx_paths, runtimes=runtimes, log=log)
    result["ratios"] = generation_ratios(result, "original", "compressed")
    return result


def bench_subjects_generation(
    subjects: list[Subject], spec: Any, tmp: Path, log: Any
) -> dict[str, Any] | None:
    """``compress bench``: the generation figures of every torch subject that is a causal LM
    (None when there is none, or ``bench.generation.enabled`` is false); each is exported
    with past key/values into ``tmp`` for onnxruntime."""
    lms = {s.name: causal_lm_of(s.torch_model) for s in subjects if s.torch_model is not None}
    lms = {n: m for n, m in lms.items() if m is not None}
    if not lms or spec.generation.enabled is False:
        return None
    runtimes = tuple(r for r in ("torch", "onnxruntime") if r in spec.runtimes)
    paths: dict[str, Path] = {}
    if "onnxruntime" in runtimes:
        for i, (name, lm) in enumerate(lms.items()):
            log(f"  exporting {name}'s decoder with past key/values for onnxruntime")
            paths[name] = Path(export_decoder_onnx(lm, tmp / f"lm{i}_with_past.onnx")["path"])
    return measure_generation(
        lms, _generation_spec(spec), onnx_paths=paths, runtimes=runtimes, log=log
    )


def _generation_spec(spec: Any) -> GenerationBenchSpec:
    """The generation bench of a ``BenchSpec`` (its rounds, threads and budget)."""
    options = spec.generation
    return GenerationBenchSpec(
        prefill_shapes=options.shapes(),
        decode_batch=options.decode_batch,
        decode_prompt_len=options.prompt_len,
        new_tokens=options.new_tokens,
        warmup=max(1, min(spec.warmup, 2)),
        rounds=spec.rounds,
        iterations=spec.iterations,
        threads=spec.threads,
        budget_s=spec.budget_s,
    )


# ------------------------------------------------------------------ compress bench


@dataclass
class BenchSetup:
    """What ``compress bench`` gathered from its arguments before measuring."""

    subjects: list[Subject]
    input_specs: dict[str, Any]
    bench: Any  # BenchSpec
    onnx: Any  # OnnxSpec
    data: Any = None  # DataBundle for the metric, or None
    notes: list[str] = field(default_factory=list)


def _size_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".safetensors": "safetensors", ".onnx": "onnx"}.get(suffix, "checkpoint")


def _unique_name(path: Path, taken: set[str]) -> str:
    # A plan is named after its folder (sample_models/digits_cnn/plan.yaml -> digits_cnn).
    plan = path.suffix.lower() in (".yaml", ".yml")
    name = (path.parent.name if path.stem == "plan" else path.stem) if plan else path.name
    if name in taken:
        name = f"{path.parent.name}/{path.name}"
    while name in taken:
        name += "'"
    taken.add(name)
    return name


def load_subjects(
    paths: list[Path],
    *,
    architecture: str | None = None,
    inputs: list[str] | None = None,
    bench: dict[str, Any] | None = None,
    eval_source: str | None = None,
    metric: str | None = None,
    exporter: str | None = None,
    trust_pickle: bool = False,
    safe: bool = False,
) -> BenchSetup:
    """Load every MODEL of ``compress bench``: a plan (its original model, inputs, data and
    bench settings), a compress ``.safetensors``, an ``.onnx`` file, or a checkpoint with
    ``architecture``. Settings: flags > the first plan's > defaults.

    Raises:
        CheckpointError / PlanError / DataError: a file or flag is wrong (exit 2).
    """

    if not paths:
        raise PlanError("compress bench needs at least one MODEL")
    subjects: list[Subject] = []
    specs: dict[str, Any] = {}
    plan = base_dir = tokenizer = None
    taken: set[str] = set()
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise PlanError(f"{path} does not exist", hint="check the MODEL path")
        name = _unique_name(path, taken)
        if path.suffix.lower() in (".yaml", ".yml"):
            loaded_plan = load_plan(path, [])
            loaded = load_model(
                loaded_plan.plan.model, loaded_plan.base_dir, safe=safe or loaded_plan.plan.safe
            )
            if plan is None:
                plan, base_dir, tokenizer = loaded_plan.plan, loaded_plan.base_dir, loaded.tokenizer
            s = Subject(name, loaded.kind, loaded.path)
            probe = {
                "kind": "plan_model",
                "spec": loaded_plan.plan.model.model_dump(mode="json"),
                "base_dir": str(loaded_plan.base_dir.resolve()),
            }
        elif path.suffix.lower() == ".onnx":
            loaded = None
            s = Subject(name, "onnx", path, onnx_path=path)
            probe = None
        elif is_compressed_file(path):
            loaded = load_model(ModelSpec(checkpoint=str(path)), None, safe=safe)
            s = Subject(name, "compressed", path)
            probe = {"kind": "compressed", "path": str(path.resolve())}
        else:
            if not architecture:
                raise PlanError(
                    f"{path} is a plain checkpoint: compress bench needs the code that builds it",
                    hint="pass --architecture package.module:factory, or give a plan instead",
                )
            mspec = ModelSpec(
                checkpoint=str(path.resolve()), architecture=architecture, trust_pickle=trust_pickle
            )
            loaded = load_model(mspec, None, safe=safe)
            s = Subject(name, loaded.kind, path)
            probe = (
                {
                    "kind": "plan_model",
                    "spec": mspec.model_dump(mode="json"),
                    "base_dir": str(Path.cwd()),
                }
                if loaded.kind != "torchscript"
                else None
            )
        if loaded is not None:
            if loaded.kind == "onnx":
                s.onnx_path, s.kind = loaded.path, "onnx"
            else:
                s.torch_model = loaded.model.eval()
                if probe is not None:
                    s.probes["torch"] = probe
            for key, value in loaded.input_specs.items():
                specs.setdefault(key, value)
        if s.onnx_path is not None:
            s.probes["onnxruntime"] = {"kind": "onnx", "path": str(s.onnx_path.resolve())}

            s.sizes["onnx"] = artifact_size(s.onnx_path)
        else:
            s.sizes[_size_kind(s.path)] = _path_size(s.path)
        subjects.append(s)
    for text in inputs or []:
        key, fields = parse_input_option(text)
        specs[key] = InputSpec.model_validate(fields)
    if not specs:
        specs = onnx_input_specs([s.onnx_path for s in subjects if s.onnx_path is not None])
    settings = plan.bench.model_dump() if plan is not None else {}
    settings.update({k: v for k, v in (bench or {}).items() if v is not None})
    bench_spec = _validated(BenchSpec, settings, "bench option")
    onnx_spec = plan.export.onnx if plan is not None else OnnxSpec()
    if exporter:
        onnx_spec = _validated(
            OnnxSpec, {**onnx_spec.model_dump(), "exporter": exporter}, "--exporter"
        )
    data = None
    if eval_source or (plan is not None and plan.data.eval):
        if eval_source:
            dspec = _validated(DataSpec, {"eval": eval_source, "metric": metric}, "--eval")
            holder, base = SimpleNamespace(data=dspec, safe=safe), Path.cwd()
        else:
            holder, base = plan, base_dir
            if metric:
                holder = SimpleNamespace(
                    data=plan.data.model_copy(update={"metric": metric}), safe=safe
                )
        data = DataBundle(holder, base, specs, tokenizer)
    return BenchSetup(subjects, specs, bench_spec, onnx_spec, data)


def _validated(cls: Any, values: dict[str, Any], what: str) -> Any:

    try:
        return cls.model_validate(values)
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise PlanError(f"invalid {what}", problems=problems) from None


def _path_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def bench_paths(paths: list[Path], *, log: Any = None, **options: Any) -> dict[str, Any]:
    """``compress bench``: load every MODEL (see ``load_subjects``), export torch models to
    ONNX for onnxruntime timing (verified, in a temporary folder), evaluate the metric when
    there is eval data, and measure everything interleaved.

    Returns:
        A bench report: ``models`` (list, in argument order) with params, macs, size_bytes,
        latency_ms, peak_memory_bytes and metric; ``ratios`` of each model to the first.
    """

    log = log or (lambda _m: None)
    setup = load_subjects(paths, **options)
    spec, specs = setup.bench, setup.input_specs
    biggest = max(spec.batch_sizes)
    example = None
    if setup.data is not None:
        example = setup.data.first_batch("eval", biggest).inputs
    if example is None or set(example) != set(specs):
        example = example_inputs(specs, batch_size=biggest)
    example = {k: v.detach().cpu() for k, v in example.items()}
    one = resize_batch(example, next(iter(specs.values())).shape[0])
    entries = []
    for s in setup.subjects:
        entry: dict[str, Any] = {
            "name": s.name,
            "path": str(s.path),
            "kind": s.kind,
            "params": None,
            "macs": None,
        }
        if isinstance(s.torch_model, nn.Module):
            entry.update(model_facts(s.torch_model, one))
        entries.append(entry)
    metrics = evaluate_subjects(setup.subjects, setup.data, log) if setup.data else {}
    with tempfile.TemporaryDirectory(prefix="compress-bench-") as tmp:
        if "onnxruntime" in spec.runtimes:
            for i, s in enumerate(setup.subjects):
                if s.onnx_path is None and s.torch_model is not None:
                    log(f"  exporting {s.name} to ONNX for onnxruntime")
                    s.onnx_export = export_onnx(
                        s.torch_model, example, Path(tmp) / f"m{i}.onnx", setup.onnx, specs=specs
                    )
                    s.onnx_path = Path(s.onnx_export["path"])
                    s.sizes["onnx"] = s.onnx_export["size_bytes"]
                    s.probes["onnxruntime"] = {"kind": "onnx", "path": str(s.onnx_path)}
        measured = measure(setup.subjects, spec, example, log=log, safe=options.get("safe", False))
        generation = bench_subjects_generation(setup.subjects, spec, Path(tmp), log)
    used = {s.name: s.onnx_export["exporter"] for s in setup.subjects if s.onnx_export}
    if len(set(used.values())) > 1:
        measured["notes"].append(
            f"ONNX exporters differ ({used}): onnxruntime timings compare unlike graphs; "
            "choose one with --exporter"
        )
    for entry, s in zip(entries, setup.subjects, strict=True):
        entry.update(size_bytes=s.sizes, metric=metrics.get(s.name), **measured["models"][s.name])
        if s.onnx_export is not None:
            entry["onnx_export"] = {k: v for k, v in s.onnx_export.items() if k != "path"}
        if generation is not None and s.name in generation["models"]:
            entry["generation"] = generation["models"][s.name]
    ratios = [
        {
            "model": e["name"],
            "baseline": entries[0]["name"],
            **compute_ratios(entries[0], e, measured["primary"]),
        }
        for e in entries[1:]
    ]
    if generation is not None and entries[0]["name"] in generation["models"]:
        for r in ratios:
            if r["model"] in generation["models"]:
                r["generation"] = generation_ratios(generation, r["baseline"], r["model"])
        measured["notes"] += generation["notes"]
    return {
        "schema_version": BENCH_SCHEMA_VERSION,
        "kind": "bench",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tool": {"name": "compress", "version": __version__},
        "inputs": {n: s.model_dump(mode="json") for n, s in specs.items()},
        "settings": measured["settings"],
        "environment": measured["environment"],
        "primary": measured["primary"],
        "models": entries,
        "ratios": ratios,
        "notes": setup.notes + measured["notes"],
    }


def evaluate_subjects(subjects: list[Subject], data: Any, log: Any) -> dict[str, dict[str, Any]]:
    """The metric of every subject on the eval data; fidelity metrics use the first model as
    the teacher."""

    name = data.spec.metric or ("accuracy" if data.has_labels("eval") else "cosine")
    metric = get_metric(name)
    log(f"  metric: {metric.name} on the eval data")
    runners = {
        s.name: s.torch_model if s.torch_model is not None else OnnxModel(s.onnx_path)
        for s in subjects
    }
    outputs: dict[str, list] = {n: [] for n in runners}
    targets = []
    with torch.no_grad():
        for batch in data.loader("eval"):
            targets.append(batch.target)
            for n, run in runners.items():
                # Only the metric's compact form of each batch is kept (LM logits are big).
                outputs[n].append(metric.keep(primary_output(run(**batch.inputs)), batch.target))
    teacher = outputs[subjects[0].name] if metric.needs_teacher else None
    return {
        n: {
            "name": metric.name,
            "value": compute_metric(metric, outputs[n], targets, teacher, kept=True),
            "higher_is_better": metric.higher_is_better,
        }
        for n in runners
    }
