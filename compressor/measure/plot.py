"""The report's PNG: size vs latency vs metric of the original and the compressed model.

Left: one point per model, latency (x) against the metric (y) (or size when there is no
metric), marker area proportional to the size on disk. Right: p50 latency per runtime /
device / batch, original and compressed side by side. Uses matplotlib's object API (no global
backend state), so it works headless and inside other programs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.measure.formatting import fmt_bytes

COLORS = {"original": "#7f7f7f", "compressed": "#1f77b4"}


def _size(model: dict[str, Any], basis: str | None) -> int | None:
    sizes = model.get("size_bytes") or {}
    if basis and basis in sizes:
        return sizes[basis]
    return next(iter(sizes.values()), None)


def _latencies(model: dict[str, Any]) -> dict[str, float]:
    out = {}
    for runtime, devices in (model.get("latency_ms") or {}).items():
        for device, shapes in devices.items():
            for key, stats in shapes.items():
                out[f"{runtime}\n{device} b{key}"] = stats["p50"]
    return out


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Write the report's figure to ``path`` (PNG)."""
    # Deferred: matplotlib is slow to import and only report.png needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = report["models"]
    ratios = report.get("ratios") or {}
    prim = (report.get("bench") or {}).get("primary") or {}
    basis = ratios.get("size_basis")
    fig = Figure(figsize=(10, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})

    metric = report.get("metric") or {}
    for name, model in models.items():
        size = _size(model, basis) or 0
        lat = (
            (
                (model.get("latency_ms") or {})
                .get(prim.get("runtime"), {})
                .get(prim.get("device"), {})
                .get(prim.get("key"), {})
            ).get("p50")
            if prim
            else None
        )
        value = (model.get("metric") or {}).get("value")
        x = lat if lat is not None else size / 1e6
        y = value if value is not None else size / 1e6
        area = 60 + 600 * (size / max(_size(m, basis) or 1 for m in models.values()))
        left.scatter([x], [y], s=area, color=COLORS.get(name, "#2ca02c"), alpha=0.7, label=name)
        left.annotate(
            f"{name}\n{fmt_bytes(size)}",
            (x, y),
            textcoords="offset points",
            xytext=(8, 8),
            fontsize=8,
        )
    left.set_xlabel(
        f"p50 latency, ms ({prim.get('runtime')}, {prim.get('device')}, batch {prim.get('key')})"
        if prim
        else "size on disk, MB"
    )
    left.set_ylabel(metric.get("name") or "size on disk, MB")
    left.set_title("trade-off (marker area = size on disk)", fontsize=9)
    left.grid(alpha=0.3)
    left.margins(0.25)

    configs = list(dict.fromkeys(k for m in models.values() for k in _latencies(m)))
    if configs:
        width = 0.8 / len(models)
        for i, (name, model) in enumerate(models.items()):
            lat = _latencies(model)
            xs = [j + i * width for j in range(len(configs))]
            right.bar(
                xs,
                [lat.get(c, 0) for c in configs],
                width=width,
                label=name,
                color=COLORS.get(name, "#2ca02c"),
            )
        right.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(configs))])
        right.set_xticklabels(configs, fontsize=7)
        right.set_ylabel("p50 latency, ms")
        right.set_yscale("log")
        right.legend(fontsize=8)
        right.set_title("latency per runtime / device / batch (log scale)", fontsize=9)
    else:
        right.text(0.5, 0.5, "latency not measured", ha="center", va="center")
        right.set_axis_off()
    title = report.get("plan", {}).get("name") or "compress"
    fig.suptitle(f"{title}: original vs compressed", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format="png")
