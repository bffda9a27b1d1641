"""Timing and memory primitives: interleaving order, statistics, budget, memory probe."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from compressor.formats.onnx.export import export_onnx
from compressor.measure.latency import physical_cores, summarize, time_interleaved
from compressor.measure.memory_probe import probe_memory
from compressor.spec.sections import OnnxSpec


class FakeClock:
    """Each call of a model advances the clock by that model's fixed cost (ns)."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def make_models(clock: FakeClock, costs: dict[str, int], log: list[str]):
    def make(name: str):
        def run() -> None:
            log.append(name)
            clock.now += costs[name]

        return run

    return {name: make(name) for name in costs}


def test_rounds_interleave_models_and_rotate_the_starting_model():
    clock, log = FakeClock(), []
    fns = make_models(clock, {"a": 1_000_000, "b": 3_000_000, "c": 2_000_000}, log)
    stats = time_interleaved(fns, warmup=1, rounds=3, iterations=2, clock=clock)
    assert log[:3] == ["a", "b", "c"]  # warm-up
    blocks = log[3:]
    # Each block: one untimed settle call + 2 timed calls, models in rotating order.
    starts = [blocks[i] for i in range(0, len(blocks), 3)]
    assert starts == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert stats["b"]["p50"] == 3.0 and stats["a"]["p90"] == 1.0
    assert stats["c"]["samples"] == 6 and stats["c"]["rounds"] == 3


def test_budget_cuts_iterations_equally_for_every_model():
    clock, log = FakeClock(), []
    fns = make_models(clock, {"fast": 1_000_000, "slow": 99_000_000}, log)  # 0.1 s per pair
    stats = time_interleaved(fns, warmup=1, rounds=2, iterations=50, budget_s=1.0, clock=clock)
    # 1 s / (2 rounds x 0.1 s) = 5 calls per block, minus the settle call.
    assert stats["fast"]["samples"] == stats["slow"]["samples"] == 2 * 4


def test_summary_statistics():
    stats = summarize([float(v) for v in range(1, 11)], [5.0, 6.0, 5.5])
    assert stats["p50"] == 5.5 and stats["p90"] == 9.1 and stats["min"] == 1.0
    assert stats["spread_pct"] == round((6.0 - 5.0) / 5.5 * 100, 1)


def test_physical_cores_is_within_what_the_process_may_use():
    cores = physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))


def test_memory_probe_measures_a_fresh_process(tmp_path: Path):
    big = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 512)).eval()

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = big

        def forward(self, x):
            return self.net(x)

    x = torch.rand(8, 512)
    export_onnx(Wrap().eval(), {"x": x}, tmp_path / "m.onnx", OnnxSpec(exporter="legacy"))
    got = probe_memory(
        {"kind": "onnx", "path": str(tmp_path / "m.onnx")},
        "onnxruntime",
        "cpu",
        {"x": x},
        threads=1,
    )
    weights = sum(p.numel() * 4 for p in big.parameters())  # 8.4 MB of float32
    assert got["model_bytes"] >= weights * 0.5
    assert got["peak_bytes"] >= got["model_bytes"]
    failed = probe_memory(
        {"kind": "onnx", "path": str(tmp_path / "none.onnx")},
        "onnxruntime",
        "cpu",
        {"x": x},
        threads=1,
    )
    assert "memory probe failed" in failed["error"]
