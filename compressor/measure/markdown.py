"""``report.md``: the run's figures as a CI job summary or PR comment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.measure.formatting import fmt_bytes
from compressor.measure.tables import comparison_rows, headline, run_entries


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: for a CI job summary or a PR comment."""
    names, entries = run_entries(report)
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
            f"{s['iterations']} timed calls per model; p50/p90 over all calls"
            + (
                "; onnxruntime threads park between calls (no spinning)"
                if s.get("ort_spinning") is False
                else ""
            ),
            f"- peak memory: fresh process per model and runtime, batch {s.get('memory_batch')}"
            if s.get("memory")
            else "- peak memory: not measured",
        ]
    for note in report.get("notes") or []:
        lines.append(f"- note: {note}")
    lines += ["", "![size, latency and metric](report.png)", ""]
    return "\n".join(lines)


QUANTIZED_LABELS = {
    "onnx_int8": "int8 dynamic quantisation",
    "onnx_int8_static": "int8 static quantisation (QDQ, calibrated)",
    "onnx_fp16": "float16 weights and compute (float32 inputs and outputs)",
}


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
    if kind in QUANTIZED_LABELS:
        diffs = ", ".join(f"batch {k}: {d:.2g}" for k, d in art.get("max_abs_diff", {}).items())
        text = f"{QUANTIZED_LABELS[kind]}; max abs diff vs torch {diffs}"
        if art.get("metric") is not None:
            text += f"; {art['metric']['name']} {art['metric']['value']:.4f}"
        return text
    if kind == "onnx_optimized":
        return "onnxruntime graph optimisations (extended), verified"
    if kind == "safetensors":
        return (
            f"{art.get('manifest_ops', 0)} manifest ops; "
            f"{len(art.get('tied_aliases') or {})} tied aliases stored once"
        )
    if kind == "tokenizer":
        return "the rewritten tokenizer (new token ids): " + ", ".join(art.get("files") or [])
    if kind == "hf" and art.get("loads_with"):
        return f"loads with {art['loads_with']}"
    return ""
