"""Run reports: ratios, gates, report.json/md/png and the terminal table."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from compressor.formats.export import export_model
from compressor.measure.report import (
    REPORT_SCHEMA_VERSION,
    build_report,
    check_gates,
    compute_ratios,
    write_reports,
)
from compressor.measure.tables import render_summary_table
from compressor.spec.sections import GatesSpec


def stats(p50: float) -> dict:
    return {
        "p50": p50,
        "p90": p50 * 1.2,
        "mean": p50,
        "min": p50,
        "spread_pct": 1.0,
        "samples": 10,
        "rounds": 2,
        "batch_size": 1,
        "seq_len": None,
    }


PRIMARY = {"runtime": "onnxruntime", "device": "cpu", "batch_size": 1, "seq_len": None, "key": "1"}


def bench_result() -> dict:
    """What bench_run returns, with fixed numbers: compressed is 2x faster in onnxruntime."""
    return {
        "settings": {
            "threads": 2,
            "warmup": 1,
            "rounds": 2,
            "iterations": 5,
            "memory": True,
            "memory_batch": 32,
        },
        "environment": {"cpu": "test cpu", "torch": "x", "onnxruntime": "y"},
        "primary": PRIMARY,
        "models": {
            "original": {
                "latency_ms": {
                    "onnxruntime": {"cpu": {"1": stats(2.0), "32": stats(40.0)}},
                    "torch": {"cpu": {"1": stats(3.0)}},
                },
                "peak_memory_bytes": {"onnxruntime": {"cpu": 4_000_000}},
                "size_bytes": {"onnx": 400_000},
            },
            "compressed": {
                "latency_ms": {
                    "onnxruntime": {"cpu": {"1": stats(1.0), "32": stats(10.0)}},
                    "torch": {"cpu": {"1": stats(3.0)}},
                },
                "peak_memory_bytes": {"onnxruntime": {"cpu": 1_000_000}},
            },
        },
        "notes": [],
    }


@pytest.fixture
def report(mlp_ctx, compacted, tmp_path):
    model, manifest = compacted
    artifacts = export_model(model, mlp_ctx, tmp_path / "out", manifest)
    example = mlp_ctx.example_inputs()
    from compressor.run.runner import model_facts

    return build_report(
        mlp_ctx,
        original_facts=model_facts(mlp_ctx.original, example),
        compressed_facts=model_facts(model, example),
        metric_before=0.95,
        metric_after=0.93,
        artifacts=artifacts,
        bench=bench_result(),
        seconds=1.5,
    )


def test_report_holds_the_documented_schema(report):
    assert report["schema_version"] == REPORT_SCHEMA_VERSION
    for name in ("original", "compressed"):
        model = report["models"][name]
        assert {"params", "macs", "size_bytes", "latency_ms", "peak_memory_bytes", "metric"} <= set(
            model
        )
        assert model["latency_ms"]["onnxruntime"]["cpu"]["1"]["p90"] > 0
    assert report["models"]["compressed"]["metric"] == {"name": "accuracy", "value": 0.93}
    assert set(report["models"]["original"]["size_bytes"]) == {"checkpoint", "safetensors", "onnx"}
    r = report["ratios"]
    assert r["latency"] == 0.5 and r["speedup"] == 2.0
    assert r["latency_basis"] == "onnxruntime/cpu/1"
    assert r["latency_by"] == {
        "onnxruntime/cpu/1": 0.5,
        "onnxruntime/cpu/32": 0.25,
        "torch/cpu/1": 1.0,
    }
    assert r["peak_memory_by"] == {"onnxruntime/cpu": 0.25}
    assert r["size_basis"] == "safetensors" and 0 < r["size"] < 0.3
    assert 0 < r["params"] < 0.2 and 0 < r["macs"] < 0.2
    assert report["metric"]["drop"] == pytest.approx(0.02)
    assert 0 < report["onnx_max_abs_diff"] < 1e-4
    assert report["gates"] == {"checked": [], "failed": []}


def test_gates_name_gate_value_and_bound(report):
    gates = GatesSpec(min_speedup=3.0, max_size_ratio=0.5, max_metric_drop=0.01)
    failures = check_gates(report, gates, {})
    assert failures == [
        "max_metric_drop: measured 0.02 (metric drop (original - compressed, in metric units); "
        "accuracy), bound <= 0.01",
        "min_speedup: measured 2 (speedup (original / compressed p50 latency); onnxruntime, "
        "cpu, batch 1), bound >= 3",
    ]
    checked = {g["gate"]: g for g in report["gates"]["checked"]}
    assert checked["max_size_ratio"]["passed"] and not checked["min_speedup"]["passed"]


def test_extra_gates_override_the_plan(report):
    assert check_gates(report, GatesSpec(min_speedup=3.0), {"min_speedup": 1.5}) == []
    assert check_gates(report, GatesSpec(), {"max_latency_ms": 0.5})[0].startswith(
        "max_latency_ms: measured 1 (compressed p50 latency in ms; p50, onnxruntime"
    )


def test_a_gate_on_something_not_measured_fails(report):
    report["ratios"]["speedup"] = None
    report["metric"] = None
    failures = check_gates(report, GatesSpec(min_speedup=1.1, min_metric=0.5), {})
    assert failures[0].startswith("min_metric: not measured (no metric was measured")
    assert failures[1].startswith("min_speedup: not measured (no latency was measured")


def test_ratios_use_a_size_kind_both_models_have():
    a = {"params": 100, "size_bytes": {"checkpoint": 1000, "onnx": 800}, "latency_ms": {}}
    b = {"params": 25, "size_bytes": {"safetensors": 300, "onnx": 200}, "latency_ms": {}}
    r = compute_ratios(a, b, None)
    assert (r["size"], r["size_basis"], r["params"]) == (0.25, "onnx", 0.25)
    assert r["latency"] is None and r["speedup"] is None


def test_write_reports_writes_json_markdown_and_png_atomically(report, tmp_path):
    check_gates(report, GatesSpec(min_speedup=3.0), {})
    out = tmp_path / "reports"
    write_reports(report, out)
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]
    assert json.loads((out / "report.json").read_text())["ratios"]["speedup"] == 2.0
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| latency ort cpu b1 | 2 / 2.4 | 1 / 1.2 | 0.50x |" in md
    assert "| min_speedup | 2 | >= 3 | **FAILED** |" in md
    assert "model.onnx" in md and "legacy exporter, opset 18" in md


def test_summary_table_shows_both_models_and_ratios(report):
    console = Console(record=True, width=120)
    console.print(render_summary_table(report))
    text = console.export_text()
    assert "original" in text and "compressed" in text and "ratio" in text
    assert "0.50x" in text and "speedup 2.00x (onnxruntime/cpu/1, p50)" in text
    assert "accuracy 0.9500 -> 0.9300" in text


def _generation(decode_a: float, decode_b: float, prefill_a: float, prefill_b: float) -> dict:
    def model(decode: float, prefill: float, kv: int) -> dict:
        return {
            "prefill_ms": {"onnxruntime": {"1x128": stats(prefill)}, "torch": {"1x128": stats(9)}},
            "decode": {"onnxruntime": {"tokens_per_s": decode}, "torch": {"tokens_per_s": 10.0}},
            "kv_cache": {"bytes_per_token": kv},
        }

    from compressor.measure.lm import generation_ratios

    result = {
        "models": {
            "original": model(decode_a, prefill_a, 8192),
            "compressed": model(decode_b, prefill_b, 4096),
        },
        "settings": {},
        "notes": [],
    }
    result["ratios"] = generation_ratios(result, "original", "compressed")
    return result


def test_generation_figures_are_reported_shown_and_gated(mlp_ctx, compacted, tmp_path):
    model, manifest = compacted
    artifacts = export_model(model, mlp_ctx, tmp_path / "out", manifest)
    bench = {**bench_result(), "generation": _generation(100.0, 180.0, 10.0, 5.0)}
    report = build_report(
        mlp_ctx,
        original_facts={},
        compressed_facts={},
        metric_before=None,
        metric_after=None,
        artifacts=artifacts,
        bench=bench,
        seconds=1.0,
    )
    assert report["generation"]["ratios"]["decode_tokens_per_s"]["onnxruntime"] == 1.8
    assert report["models"]["compressed"]["generation"]["kv_cache"]["bytes_per_token"] == 4096
    # onnxruntime is the figure gated when it was timed; the bound is named on failure.
    assert check_gates(report, GatesSpec(min_decode_speedup=1.6, max_prefill_ratio=0.6), {}) == []
    failures = check_gates(report, GatesSpec(min_decode_speedup=2.0, max_prefill_ratio=0.4), {})
    assert failures == [
        "min_decode_speedup: measured 1.8 (decode tokens/s ratio (compressed / original, KV "
        "cache); onnxruntime), bound >= 2",
        "max_prefill_ratio: measured 0.5 (prefill latency ratio (compressed / original p50); "
        "onnxruntime, 1x128), bound <= 0.4",
    ]
    console = Console(record=True, width=200)
    console.print(render_summary_table(report))
    text = console.export_text()
    assert "decode ort tok/s" in text and "180.0" in text and "prefill ort 1x128" in text
    assert "decode 1.80x tokens/s (ort), prefill 0.50x latency (1x128)" in text
    assert "KV cache / token" in text


def test_generation_gates_without_a_causal_lm_fail_as_not_measured(report):
    failures = check_gates(report, GatesSpec(min_decode_speedup=1.5), {})
    assert failures[0].startswith("min_decode_speedup: not measured (no generation speed")
