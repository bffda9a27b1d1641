"""The terminal tables of ``compress run`` and ``compress bench`` (rich), and the comparison
rows and headline they share with ``report.md``."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from compressor.measure.formatting import fmt_bytes, fmt_count, fmt_ratio, short_runtime

SIZE_ORDER = (
    "safetensors",
    "onnx",
    "onnx_optimized",
    "onnx_int8",
    "onnx_int8_static",
    "onnx_fp16",
    "hf",
    "checkpoint",
)


def safe_ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 4) if num is not None and den else None


def comparison_rows(entries: list[dict[str, Any]]) -> list[tuple[str, list[str], list[str]]]:
    """``(label, [value per model], [ratio to the first model, per later model])`` rows."""
    rows: list[tuple[str, list[str], list[str]]] = []

    def add(label: str, values: list[float | None], fmt: Any) -> None:
        if all(v is None for v in values):
            return
        ratios = [fmt_ratio(safe_ratio(v, values[0])) for v in values[1:]]
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
            f"peak mem {short_runtime(runtime)} {device}",
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
        ratios = [fmt_ratio(safe_ratio(v, values[0])) for v in values[1:]]
        rows.append((f"latency {short_runtime(runtime)} {device} b{key}", cells, ratios))
    rows += generation_rows(entries)
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


def generation_rows(entries: list[dict[str, Any]]) -> list[tuple[str, list[str], list[str]]]:
    """Causal LMs' prefill latency (p50 / p90 ms), decode tokens/s and KV bytes per token."""
    gens = [e.get("generation") or {} for e in entries]
    if not any(gens):
        return []
    rows: list[tuple[str, list[str], list[str]]] = []
    prefill_keys = list(
        dict.fromkeys((r, k) for g in gens for r, ks in g.get("prefill_ms", {}).items() for k in ks)
    )
    for runtime, key in prefill_keys:
        stats = [g.get("prefill_ms", {}).get(runtime, {}).get(key) for g in gens]
        values = [st["p50"] if st else None for st in stats]
        cells = [f"{st['p50']:.3g} / {st['p90']:.3g}" if st else "-" for st in stats]
        ratios = [fmt_ratio(safe_ratio(v, values[0])) for v in values[1:]]
        rows.append((f"prefill {short_runtime(runtime)} {key}", cells, ratios))
    for runtime in dict.fromkeys(r for g in gens for r in g.get("decode", {})):
        values = [g.get("decode", {}).get(runtime, {}).get("tokens_per_s") for g in gens]
        ratios = [fmt_ratio(safe_ratio(v, values[0])) for v in values[1:]]
        cells = [f"{v:.1f}" if v is not None else "-" for v in values]
        rows.append((f"decode {short_runtime(runtime)} tok/s", cells, ratios))
    kv = [(g.get("kv_cache") or {}).get("bytes_per_token") for g in gens]
    if any(v is not None for v in kv):
        rows.append(
            (
                "KV cache / token",
                [fmt_bytes(v) for v in kv],
                [fmt_ratio(safe_ratio(v, kv[0])) for v in kv[1:]],
            )
        )
    return rows


def run_entries(report: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    names = list(report["models"])
    return names, [report["models"][n] for n in names]


def _rich_table(names: list[str], entries: list[dict[str, Any]], title: str) -> Any:

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

    names, entries = run_entries(report)
    lines = [_rich_table(names, entries, "compress: original vs compressed")]
    for line in headline(report):
        lines.append(Text(line))
    return Group(*lines)


def render_bench_table(result: dict[str, Any]) -> Any:
    """The terminal table of ``compress bench``: the models side by side."""

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
    gen = (report.get("generation") or {}).get("ratios") or {}
    decode = gen.get("decode_tokens_per_s") or {}
    runtime = next((r for r in ("onnxruntime", "torch") if r in decode), None)
    if runtime is not None:
        text = f"decode {decode[runtime]:.2f}x tokens/s ({short_runtime(runtime)})"
        prefill = (gen.get("prefill_latency") or {}).get(runtime) or {}
        if prefill:
            shape, value = next(iter(prefill.items()))
            text += f", prefill {value:.2f}x latency ({shape})"
        out.append(text)
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
