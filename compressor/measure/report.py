"""Run reports: ``report.json`` (versioned schema), ``report.md`` (CI summary / PR comment),
``report.png`` (plot), and the terminal tables of ``compress run`` and ``compress bench``.

``report.json`` schema, version 1 (documented in ``docs/ci/README.md``)::

    schema_version: 1, kind: "run", tool {name, version}, created_utc, seconds,
    plan {name, seed, stages},
    models {original, compressed}: {params, macs, size_bytes {artifact: bytes},
        latency_ms {runtime: {device: {"B" | "BxS": {p50, p90, mean, min, spread_pct,
        samples, rounds, batch_size, seq_len}}}}, peak_memory_bytes {runtime: {device: bytes}},
        metric {name, value} | null},
    ratios {params, macs, size, size_basis, latency, speedup, latency_basis,
        latency_by {"runtime/device/B": ratio}, peak_memory_by {"runtime/device": ratio}},
    metric {name, higher_is_better, before, after, drop} | null,
    onnx_max_abs_diff, onnx {exporter, fallback_reason, opset, max_abs_diff {shape: diff}},
    artifacts {kind: {path, size_bytes, ...}}, bench {settings, environment, primary, notes},
    stages [...], notes [...], gates {checked [{gate, value, bound, op, passed, detail}],
    failed [message]}

Ratios are compressed / original (below 1 is smaller or faster); ``speedup`` is the inverse
of the primary latency ratio (the plan's first runtime, device and batch size)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from compressor.files.atomic import atomic_path, write_json_atomic, write_text_atomic
from compressor.formats.onnx.quantize import ARTIFACT_KEYS as QUANT_KEYS
from compressor.formats.sizes import reference_sizes

# Re-exported: report.check_gates is a public name from before gates had a module of its own.
from compressor.measure.gates import check_gates  # noqa: F401
from compressor.measure.markdown import render_markdown
from compressor.measure.plot import plot_report
from compressor.measure.tables import safe_ratio
from compressor.spec.sections import QUANTIZED_LABELS
from compressor.version import __version__

REPORT_SCHEMA_VERSION = 1


SIZE_BASIS = ("safetensors", "onnx", "checkpoint")


def _p50(model: dict[str, Any], runtime: str, device: str, key: str) -> float | None:
    stats = (model.get("latency_ms") or {}).get(runtime, {}).get(device, {}).get(key)
    return stats["p50"] if stats else None


def compute_ratios(
    base: dict[str, Any], other: dict[str, Any], primary: dict[str, Any] | None
) -> dict[str, Any]:
    """Ratios ``other / base`` of params, MACs, size (on the first artifact kind both have),
    latency (p50) per runtime/device/shape and peak memory; ``latency`` and ``speedup``
    refer to ``primary``."""
    sizes_a, sizes_b = base.get("size_bytes") or {}, other.get("size_bytes") or {}
    basis = next((k for k in SIZE_BASIS if k in sizes_a and k in sizes_b), None)
    latency_by = {}
    for runtime, devices in (other.get("latency_ms") or {}).items():
        for device, shapes in devices.items():
            for key, stats in shapes.items():
                ref = _p50(base, runtime, device, key)
                if ref:
                    latency_by[f"{runtime}/{device}/{key}"] = safe_ratio(stats["p50"], ref)
    memory_by = {}
    for runtime, devices in (other.get("peak_memory_bytes") or {}).items():
        for device, value in devices.items():
            ref = (base.get("peak_memory_bytes") or {}).get(runtime, {}).get(device)
            if ref:
                memory_by[f"{runtime}/{device}"] = safe_ratio(value, ref)
    prim_key = f"{primary['runtime']}/{primary['device']}/{primary['key']}" if primary else None
    latency = latency_by.get(prim_key) if prim_key else None
    return {
        "params": safe_ratio(other.get("params"), base.get("params")),
        "macs": safe_ratio(other.get("macs"), base.get("macs")),
        "size": safe_ratio(sizes_b.get(basis), sizes_a.get(basis)) if basis else None,
        "size_basis": basis,
        "latency": latency,
        "speedup": round(1 / latency, 3) if latency else None,
        "latency_basis": prim_key if latency is not None else None,
        "latency_by": latency_by,
        "peak_memory_by": memory_by,
    }


def _drop(metric_def: Any, before: float, after: float) -> float:
    """How much worse ``after`` is than ``before``, in metric units (negative: better)."""
    return (before - after) if metric_def.higher_is_better else (after - before)


def _on_onnxruntime(primary: dict[str, Any] | None) -> dict[str, Any] | None:
    # ONNX copies are timed in onnxruntime only: compare them there at the primary shape.
    return {**primary, "runtime": "onnxruntime"} if primary else None


def build_report(
    ctx: Any,
    *,
    original_facts: dict[str, Any],
    compressed_facts: dict[str, Any],
    metric_before: float | None,
    metric_after: float | None,
    artifacts: dict[str, Any],
    bench: dict[str, Any] | None,
    seconds: float,
) -> dict[str, Any]:
    """Assemble the run report (schema above) from everything the run measured."""

    plan = ctx.plan
    metric_def = ctx.metric() if metric_before is not None else None
    measured = (bench or {}).get("models", {})
    models: dict[str, dict[str, Any]] = {}
    sizes = {
        "original": reference_sizes(ctx),
        "compressed": {kind: a["size_bytes"] for kind, a in artifacts.items()},
    }
    for name, facts, value in (
        ("original", original_facts, metric_before),
        ("compressed", compressed_facts, metric_after),
    ):
        m = measured.get(name, {})
        models[name] = {
            "params": facts.get("params"),
            "macs": facts.get("macs"),
            "size_bytes": {**sizes[name], **(m.get("size_bytes") or {})},
            "latency_ms": m.get("latency_ms") or {},
            "peak_memory_bytes": m.get("peak_memory_bytes") or {},
            "metric": {"name": metric_def.name, "value": value}
            if metric_def and value is not None
            else None,
        }
        generation = ((bench or {}).get("generation") or {}).get("models", {}).get(name)
        if generation is not None:
            models[name]["generation"] = generation
    # Lower-precision ONNX copies: models of their own (the compressed model's structure,
    # their own bytes, onnxruntime latency and metric), so tables, ratios and gates see them.
    artifact_ratios = {}
    for kind, key in QUANT_KEYS.items():
        art = artifacts.get(key)
        if art is None:
            continue
        label = QUANTIZED_LABELS[kind]
        m = measured.get(label, {})
        metric_value = (art.get("metric") or {}).get("value")
        models[label] = {
            "params": compressed_facts.get("params"),
            "macs": compressed_facts.get("macs"),
            "size_bytes": {"onnx": art["size_bytes"]},
            "latency_ms": m.get("latency_ms") or {},
            "peak_memory_bytes": m.get("peak_memory_bytes") or {},
            "metric": {"name": metric_def.name, "value": metric_value}
            if metric_def and metric_value is not None
            else None,
            "artifact": key,
        }
        ratios = compute_ratios(
            models["original"], models[label], _on_onnxruntime((bench or {}).get("primary"))
        )
        if ratios["size"] is None:
            # No ONNX of the original (bench off): compare with its weights file instead.
            original_sizes = models["original"]["size_bytes"]
            basis = next((k for k in ("safetensors", "checkpoint") if k in original_sizes), None)
            if basis is not None:
                ratios["size"] = safe_ratio(art["size_bytes"], original_sizes[basis])
                ratios["size_basis"] = f"onnx vs original {basis}"
        artifact_ratios[label] = ratios
        if metric_def is not None and metric_value is not None:
            artifact_ratios[label]["metric_drop"] = round(
                _drop(metric_def, metric_before, metric_value), 6
            )
    metric = None
    if metric_def is not None and metric_after is not None:
        drop = _drop(metric_def, metric_before, metric_after)
        metric = {
            "name": metric_def.name,
            "higher_is_better": metric_def.higher_is_better,
            "before": metric_before,
            "after": metric_after,
            "drop": round(drop, 6),
        }
    onnx = artifacts.get("onnx")
    verification = (onnx or {}).get("verification") or {}
    notes = (
        list(ctx.notes)
        + list(getattr(ctx.loaded, "notes", []))
        + list((bench or {}).get("notes", []))
    )
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "run",
        "tool": {"name": "compress", "version": __version__},
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
        "plan": {
            "name": plan.name or Path(str(ctx.base_dir)).name,
            "seed": plan.seed,
            "stages": [name for name, _ in plan.stage_list()],
        },
        "models": models,
        "ratios": compute_ratios(
            models["original"], models["compressed"], (bench or {}).get("primary")
        ),
        "metric": metric,
        # compressed-model ratios of each lower-precision copy (int8, int8-static, fp16).
        "artifact_ratios": artifact_ratios,
        "onnx_max_abs_diff": verification.get("max_abs_diff_overall"),
        "onnx": {k: onnx.get(k) for k in ("exporter", "fallback_reason", "opset", "external_data")}
        | {"max_abs_diff": verification.get("max_abs_diff")}
        if onnx
        else None,
        "artifacts": artifacts,
        # Causal LMs: the generation bench's settings and compressed / original ratios (the
        # figures themselves are in models.*.generation).
        "generation": {
            k: v for k, v in bench["generation"].items() if k in ("settings", "ratios", "notes")
        }
        if (bench or {}).get("generation")
        else None,
        "bench": {
            k: bench[k] for k in ("settings", "environment", "primary", "notes") if k in bench
        }
        if bench
        else None,
        "stages": ctx.stage_reports,
        "notes": notes,
        "gates": {"checked": [], "failed": []},
    }


def write_reports(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write report.png, report.md and report.json into ``out`` (each atomically; the JSON
    last, so its presence means the others are complete)."""

    out = Path(out)
    paths = {"png": out / "report.png", "md": out / "report.md", "json": out / "report.json"}
    with atomic_path(paths["png"]) as tmp:
        plot_report(report, tmp)
    write_text_atomic(paths["md"], render_markdown(report))
    write_json_atomic(paths["json"], report)
    return paths
