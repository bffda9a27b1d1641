"""Formatting figures for people: bytes, counts, ratios and runtime names, shared by the
terminal tables and ``report.md``."""

from __future__ import annotations


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


def short_runtime(runtime: str) -> str:
    return "ort" if runtime == "onnxruntime" else runtime
