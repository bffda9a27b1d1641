"""Quality gates for CI: each compares one measured figure of a run report with a bound.

A gate whose figure was not measured (no eval data, bench skipped) fails: a CI job that asks
for ``min_speedup`` must not pass because nothing was timed.
"""

from __future__ import annotations

from typing import Any

# gate -> (comparison, what the figure is)
GATES: dict[str, tuple[str, str]] = {
    "max_metric_drop": ("<=", "metric drop (original - compressed, in metric units)"),
    "min_metric": (">=", "compressed metric"),
    "min_speedup": (">=", "speedup (original / compressed p50 latency)"),
    "max_size_ratio": ("<=", "size ratio (compressed / original bytes)"),
    "max_params_ratio": ("<=", "parameter ratio"),
    "max_macs_ratio": ("<=", "MAC ratio"),
    "max_latency_ms": ("<=", "compressed p50 latency in ms"),
    "min_decode_speedup": (">=", "decode tokens/s ratio (compressed / original, KV cache)"),
    "max_prefill_ratio": ("<=", "prefill latency ratio (compressed / original p50)"),
}


def _generation_figure(report: dict[str, Any], gate: str) -> tuple[float | None, str]:
    """A causal LM's generation ratio: onnxruntime when it was timed, else torch; prefill at
    the first shape measured."""
    ratios = (report.get("generation") or {}).get("ratios") or {}
    by_runtime = ratios.get(
        "decode_tokens_per_s" if gate == "min_decode_speedup" else "prefill_latency", {}
    )
    runtime = next((r for r in ("onnxruntime", "torch") if r in by_runtime), None)
    if runtime is None:
        return None, ""
    if gate == "min_decode_speedup":
        return by_runtime[runtime], runtime
    shape, value = next(iter(by_runtime[runtime].items()))
    return value, f"{runtime}, {shape}"


def _measured(report: dict[str, Any], gate: str) -> tuple[float | None, str, str]:
    """(value, where it was measured, why it is missing)."""
    ratios = report.get("ratios") or {}
    metric = report.get("metric") or {}
    bench = report.get("bench") or {}
    prim = bench.get("primary") or {}
    where = f"{prim.get('runtime')}, {prim.get('device')}, batch {prim.get('key')}" if prim else ""
    no_bench = "no latency was measured (bench disabled or --no-bench)"
    no_metric = "no metric was measured (the plan has no data.eval)"
    if gate == "max_metric_drop":
        return metric.get("drop"), metric.get("name", ""), no_metric
    if gate == "min_metric":
        return metric.get("after"), metric.get("name", ""), no_metric
    if gate == "min_speedup":
        return ratios.get("speedup"), where, no_bench
    if gate == "max_latency_ms":
        lat = report.get("models", {}).get("compressed", {}).get("latency_ms") or {}
        value = (
            (
                lat.get(prim.get("runtime"), {})
                .get(prim.get("device"), {})
                .get(prim.get("key"), {})
                .get("p50")
            )
            if prim
            else None
        )
        return value, f"p50, {where}", no_bench
    if gate in ("min_decode_speedup", "max_prefill_ratio"):
        value, where = _generation_figure(report, gate)
        return value, where, "no generation speed was measured (not a causal LM, or bench off)"
    if gate == "max_size_ratio":
        return ratios.get("size"), ratios.get("size_basis") or "", "no size was measured"
    if gate == "max_params_ratio":
        return ratios.get("params"), "", "no parameter count (no example inputs)"
    if gate == "max_macs_ratio":
        return ratios.get("macs"), "", "no MAC count (no example inputs)"
    raise KeyError(gate)


def _artifact_view(report: dict[str, Any], artifact: str) -> dict[str, Any]:
    """The report as the gates see it when they target a lower-precision copy: its metric,
    ratios and latency stand in for the compressed model's (an artifact the run did not
    write has none, so every gate on it fails as not measured)."""
    ratios = (report.get("artifact_ratios") or {}).get(artifact) or {}
    model = (report.get("models") or {}).get(artifact) or {}
    metric = dict(report.get("metric") or {})
    if metric and model.get("metric"):
        metric.update(after=model["metric"]["value"], drop=ratios.get("metric_drop"))
    else:
        metric = {}
    bench = dict(report.get("bench") or {})
    if bench.get("primary"):
        bench["primary"] = {**bench["primary"], "runtime": "onnxruntime"}
    return {
        **report,
        "ratios": ratios,
        "metric": metric,
        "bench": bench,
        "models": {**(report.get("models") or {}), "compressed": model},
        "generation": None,  # generation is measured on the torch / float decoder only
    }


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def check_gates(
    report: dict[str, Any], gates_spec: Any, extra_gates: dict[str, float] | None = None
) -> list[str]:
    """Evaluate the plan's gates (``extra_gates`` from ``--gate`` override them).

    Fills ``report["gates"]["checked"]`` with ``{gate, value, bound, op, passed, detail}``.

    Returns:
        One message per failed gate, naming the gate, the measured value and the bound.
    """
    bounds = {
        k: v
        for k, v in (gates_spec.model_dump() if gates_spec is not None else {}).items()
        if v is not None
    }
    bounds.update(extra_gates or {})
    artifact = str(bounds.pop("artifact", "compressed"))
    view = report if artifact == "compressed" else _artifact_view(report, artifact)
    checked, failures = [], []
    for gate, bound in bounds.items():
        if gate not in GATES:
            failures.append(f"{gate}: unknown gate (known: {', '.join(GATES)})")
            continue
        op, meaning = GATES[gate]
        value, where, missing = _measured(view, gate)
        detail = f"{meaning}" + (f"; {where}" if where else "")
        if artifact != "compressed":
            detail += f"; artifact {artifact}"
        if value is None:
            passed = False
            failures.append(f"{gate}: not measured ({missing}); bound {op} {_fmt(bound)}")
        else:
            passed = value <= bound if op == "<=" else value >= bound
            if not passed:
                failures.append(
                    f"{gate}: measured {_fmt(value)} ({detail}), bound {op} {_fmt(bound)}"
                )
        checked.append(
            {
                "gate": gate,
                "value": value,
                "bound": bound,
                "op": op,
                "passed": passed,
                "detail": detail,
                "artifact": artifact,
            }
        )
    report.setdefault("gates", {})["checked"] = checked
    report["gates"]["failed"] = failures
    return failures
