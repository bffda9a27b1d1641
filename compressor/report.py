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
of the primary latency ratio (the plan's first runtime, device and batch size).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from compressor.gates import check_gates  # noqa: F401  (the runner calls report.check_gates)

REPORT_SCHEMA_VERSION = 1
SIZE_BASIS = ("safetensors", "onnx", "checkpoint")
SIZE_ORDER = ("safetensors", "onnx", "onnx_optimized", "onnx_int8", "hf", "checkpoint")


# ------------------------------------------------------------------ numbers


def _div(num: float | None, den: float | None) -> float | None:
    return round(num / den, 4) if num is not None and den else None


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
                    latency_by[f"{runtime}/{device}/{key}"] = _div(stats["p50"], ref)
    memory_by = {}
    for runtime, devices in (other.get("peak_memory_bytes") or {}).items():
        for device, value in devices.items():
            ref = (base.get("peak_memory_bytes") or {}).get(runtime, {}).get(device)
            if ref:
                memory_by[f"{runtime}/{device}"] = _div(value, ref)
    prim_key = f"{primary['runtime']}/{primary['device']}/{primary['key']}" if primary else None
    latency = latency_by.get(prim_key) if prim_key else None
    return {
        "params": _div(other.get("params"), base.get("params")),
        "macs": _div(other.get("macs"), base.get("macs")),
        "size": _div(sizes_b.get(basis), sizes_a.get(basis)) if basis else None,
        "size_basis": basis,
        "latency": latency,
        "speedup": round(1 / latency, 3) if latency else None,
        "latency_basis": prim_key if latency is not None else None,
        "latency_by": latency_by,
        "peak_memory_by": memory_by,
    }


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
    from compressor import __version__
    from compressor.export import reference_sizes

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
    metric = None
    if metric_def is not None and metric_after is not None:
        drop = (
            (metric_before - metric_after)
            if metric_def.higher_is_better
            else (metric_after - metric_before)
        )
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
        "onnx_max_abs_diff": verification.get("max_abs_diff_overall"),
        "onnx": {k: onnx.get(k) for k in ("exporter", "fallback_reason", "opset", "external_data")}
        | {"max_abs_diff": verification.get("max_abs_diff")}
        if onnx
        else None,
        "artifacts": artifacts,
        "bench": {
            k: bench[k] for k in ("settings", "environment", "primary", "notes") if k in bench
        }
        if bench
        else None,
        "stages": ctx.stage_reports,
        "notes": notes,
        "gates": {"checked": [], "failed": []},
    }


# ------------------------------------------------------------------ table data


def fmt_bytes(n: float | None) -> str:
    """Decimal units (1 MB = 10^6 bytes), as disk sizes are usually quoted."""
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return str(n)


def fmt_count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _short(runtime: str) -> str:
    return "ort" if runtime == "onnxruntime" else runtime


def comparison_rows(entries: list[dict[str, Any]]) -> list[tuple[str, list[str], list[str]]]:
    """``(label, [value per model], [ratio to the first model, per later model])`` rows."""
    rows: list[tuple[str, list[str], list[str]]] = []

    def add(label: str, values: list[float | None], fmt: Any) -> None:
        if all(v is None for v in values):
            return
        ratios = [fmt_ratio(_div(v, values[0])) for v in values[1:]]
        rows.append((label, [fmt(v) for v in values], ratios))

    add("parameters", [e.get("params") for e in entries], fmt_count)
    add("MACs", [e.get("macs") for e in entries], fmt_count)
    kinds = [k for k in SIZE_ORDER if any(k in (e.get("size_bytes") or {}) for e in entries)]
    for kind in kinds:
        add(f"size {kind}", [(e.get("size_bytes") or {}).get(kind) for e in entries], fmt_bytes)
    mem_keys = list(
        dict.fromkeys(
            (r, d)
            for e in entries
            for r, ds in (e.get("peak_memory_bytes") or {}).items()
            for d in ds
        )
    )
    for runtime, device in mem_keys:
        add(
            f"peak mem {_short(runtime)} {device}",
            [(e.get("peak_memory_bytes") or {}).get(runtime, {}).get(device) for e in entries],
            fmt_bytes,
        )
    lat_keys = list(
        dict.fromkeys(
            (r, d, k)
            for e in entries
            for r, ds in (e.get("latency_ms") or {}).items()
            for d, ks in ds.items()
            for k in ks
        )
    )
    for runtime, device, key in lat_keys:
        stats = [
            (e.get("latency_ms") or {}).get(runtime, {}).get(device, {}).get(key) for e in entries
        ]
        values = [s["p50"] if s else None for s in stats]
        cells = [f"{s['p50']:.3g} / {s['p90']:.3g}" if s else "-" for s in stats]
        ratios = [fmt_ratio(_div(v, values[0])) for v in values[1:]]
        rows.append((f"latency {_short(runtime)} {device} b{key}", cells, ratios))
    metric = next((e["metric"] for e in entries if e.get("metric")), None)
    if metric:
        vals = [(e.get("metric") or {}).get("value") for e in entries]
        rows.append(
            (
                f"{metric['name']}",
                [f"{v:.4f}" if v is not None else "-" for v in vals],
                [
                    f"{v - vals[0]:+.4f}" if v is not None and vals[0] is not None else "-"
                    for v in vals[1:]
                ],
            )
        )
    return rows


def _run_entries(report: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    names = list(report["models"])
    return names, [report["models"][n] for n in names]


# ------------------------------------------------------------------ terminal


def _rich_table(names: list[str], entries: list[dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    table = Table(
        title=title,
        title_justify="left",
        caption="latency: p50 / p90 ms per call (ort = onnxruntime); ratios to the first model",
        caption_justify="left",
    )
    table.add_column("")
    # Two models: a ratio column. More: the ratio under each value, so the table stays narrow.
    paired = len(names) == 2
    for i, name in enumerate(names):
        table.add_column(name, justify="right")
        if paired and i:
            table.add_column("ratio", justify="right", style="bold")
    for label, cells, ratios in comparison_rows(entries):
        row = [label, cells[0]]
        for cell, ratio in zip(cells[1:], ratios, strict=True):
            row += [cell, ratio] if paired else [f"{cell}\n[bold]{ratio}[/]"]
        table.add_row(*row)
    return table


def render_summary_table(report: dict[str, Any]) -> Any:
    """The terminal summary of a run: the comparison table plus the headline figures."""
    from rich.console import Group
    from rich.text import Text

    names, entries = _run_entries(report)
    lines = [_rich_table(names, entries, "compress: original vs compressed")]
    for line in headline(report):
        lines.append(Text(line))
    return Group(*lines)


def render_bench_table(result: dict[str, Any]) -> Any:
    """The terminal table of ``compress bench``: the models side by side."""
    from rich.console import Group
    from rich.text import Text

    names = [m["name"] for m in result["models"]]
    s = result["settings"]
    caption = (
        f"threads {s['threads']}, {s['warmup']} warm-up, {s['rounds']} interleaved rounds x "
        f"{s['iterations']} calls; ratios are to {names[0]}"
    )
    parts = [_rich_table(names, result["models"], "compress bench"), Text(caption, style="dim")]
    parts += [Text(f"note: {n}", style="yellow") for n in result.get("notes", [])]
    return Group(*parts)


def headline(report: dict[str, Any]) -> list[str]:
    """One-line facts under the table: speedup, size, metric drop, ONNX check."""
    r = report.get("ratios") or {}
    out = []
    if r.get("speedup"):
        out.append(f"speedup {r['speedup']:.2f}x ({r['latency_basis']}, p50)")
    if r.get("size"):
        out.append(f"size {r['size']:.2f}x ({r['size_basis']})")
    m = report.get("metric")
    if m:
        text = f"{m['name']} {m['before']:.4f} -> {m['after']:.4f} (drop {m['drop']:+.4f})"
        for name, values in (m.get("also") or {}).items():
            if values.get("before") is not None and values.get("after") is not None:
                text += f"; {name} {values['before']:.4f} -> {values['after']:.4f}"
        out.append(text)
    onnx = report.get("onnx")
    if onnx and report.get("onnx_max_abs_diff") is not None:
        why = f"; fallback: {onnx['fallback_reason']}" if onnx.get("fallback_reason") else ""
        out.append(
            f"ONNX ({onnx['exporter']} exporter, opset {onnx['opset']}) max |diff| vs "
            f"torch {report['onnx_max_abs_diff']:.2g}{why}"
        )
    return [" | ".join(out[:3]), *out[3:]] if out else []


# ------------------------------------------------------------------ markdown


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: for a CI job summary or a PR comment."""
    names, entries = _run_entries(report)
    lines = [f"# compress report: {report['plan']['name']}", ""]
    lines += [f"**{line}**" for line in headline(report)[:1]] + [""]
    header = ["", names[0]] + [c for n in names[1:] for c in (n, "ratio")]
    lines += [
        "Latency: p50 / p90 ms per call (ort = onnxruntime); ratios: compressed / original.",
        "",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cells, ratios in comparison_rows(entries):
        row = [label, cells[0]] + [c for pair in zip(cells[1:], ratios, strict=True) for c in pair]
        lines.append("| " + " | ".join(row) + " |")
    gates = report.get("gates") or {}
    if gates.get("checked"):
        lines += ["", "## Gates", "", "| gate | measured | bound | result |", "|---|---|---|---|"]
        for g in gates["checked"]:
            value = "not measured" if g["value"] is None else f"{g['value']:.4g}"
            result = "passed" if g["passed"] else "**FAILED**"
            lines.append(f"| {g['gate']} | {value} | {g['op']} {g['bound']:g} | {result} |")
    lines += ["", "## Artifacts", "", "| file | size | details |", "|---|---|---|"]
    for kind, art in (report.get("artifacts") or {}).items():
        lines.append(
            f"| {Path(art['path']).name} | {fmt_bytes(art['size_bytes'])} | "
            f"{_artifact_details(kind, art)} |"
        )
    bench = report.get("bench")
    if bench:
        s, env = bench["settings"], bench["environment"]
        lines += [
            "",
            "## Measurement",
            "",
            f"- {env['cpu']}, threads {s['threads']}; torch {env['torch']}, onnxruntime "
            f"{env['onnxruntime']}",
            f"- {s['warmup']} warm-up calls, then {s['rounds']} interleaved rounds x "
            f"{s['iterations']} timed calls per model; p50/p90 over all calls",
            f"- peak memory: fresh process per model and runtime, batch {s.get('memory_batch')}"
            if s.get("memory")
            else "- peak memory: not measured",
        ]
    for note in report.get("notes") or []:
        lines.append(f"- note: {note}")
    lines += ["", "![size, latency and metric](report.png)", ""]
    return "\n".join(lines)


def _artifact_details(kind: str, art: dict[str, Any]) -> str:
    if kind == "onnx":
        v = art.get("verification") or {}
        diffs = ", ".join(
            f"batch {k}: {d:.2g}" for k, d in (v.get("max_abs_diff") or {}).items() if d is not None
        )
        text = f"{art['exporter']} exporter, opset {art['opset']}"
        if art.get("fallback_reason"):
            text += f" (fallback: {art['fallback_reason']})"
        return text + (f"; verified max abs diff {diffs}" if diffs else "; not verified")
    if kind == "onnx_int8":
        diffs = ", ".join(f"batch {k}: {d:.2g}" for k, d in art.get("max_abs_diff", {}).items())
        return f"int8 dynamic quantisation; max abs diff vs torch {diffs} (not gated)"
    if kind == "onnx_optimized":
        return "onnxruntime graph optimisations (extended), verified"
    if kind == "safetensors":
        return (
            f"{art.get('manifest_ops', 0)} manifest ops; "
            f"{len(art.get('tied_aliases') or {})} tied aliases stored once"
        )
    if kind == "tokenizer":
        return "the rewritten tokenizer (new token ids): " + ", ".join(art.get("files") or [])
    return ""


def write_reports(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write report.png, report.md and report.json into ``out`` (each atomically; the JSON
    last, so its presence means the others are complete)."""
    from compressor.artifacts import atomic_path, write_json_atomic, write_text_atomic
    from compressor.plot import plot_report

    out = Path(out)
    paths = {"png": out / "report.png", "md": out / "report.md", "json": out / "report.json"}
    with atomic_path(paths["png"]) as tmp:
        plot_report(report, tmp)
    write_text_atomic(paths["md"], render_markdown(report))
    write_json_atomic(paths["json"], report)
    return paths
