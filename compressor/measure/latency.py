"""Latency and peak-memory measurement that treats every model alike.

* Interleaved rounds: each round times every model in turn (the starting model rotates),
  so machine drift (thermal, turbo, noisy neighbours) hits all models equally.
* Each model's block in a round starts with one untimed call: the previous model's runtime
  threads may still be spinning, and that cost belongs to nobody's latency.
* Per-call wall times (perf_counter_ns, CUDA synchronised) with the garbage collector off;
  p50/p90 over all calls, and the spread of the per-round medians as a noise figure.
* Peak memory: measured by ``compressor.measure.memory_probe``, a fresh process per (model,
  runtime).
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime
import torch
import torch.nn as nn

from compressor.errors import StageError
from compressor.formats.onnx.session import ort_feeds, timing_session
from compressor.forward import model_device, resize_batch, resize_sequence
from compressor.measure.memory_probe import probe_memory

# ------------------------------------------------------------------ machine


def physical_cores() -> int:
    """Physical cores this process may use: hyper-threads add little to inference, and a
    container's CPU quota or affinity mask caps what the deployment would get."""
    cores: set[tuple[str, str]] = set()
    try:
        physical = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                physical = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip():
                if core is not None:
                    cores.add((physical or "0", core))
                physical = core = None
        if core is not None:
            cores.add((physical or "0", core))
    except OSError:
        pass
    count = len(cores) or os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        count = min(count, len(os.sched_getaffinity(0)))
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict[str, Any]:
    """Versions and machine facts that latency figures depend on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "physical_cores": physical_cores(),
        "threads": threads,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# ------------------------------------------------------------------ timing


def summarize(samples_ms: list[float], round_medians: list[float]) -> dict[str, Any]:
    """p50 / p90 / mean / min over all calls; spread = range of per-round medians in % of
    their median (how much the figure moved between rounds)."""
    ordered = sorted(samples_ms)

    def pct(q: float) -> float:
        # Linear interpolation between closest ranks (numpy's default).
        pos = (len(ordered) - 1) * q
        lo, hi = math.floor(pos), math.ceil(pos)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    mid = statistics.median(round_medians) if round_medians else pct(0.5)
    spread = (max(round_medians) - min(round_medians)) / mid * 100 if round_medians and mid else 0
    return {
        "p50": round(pct(0.5), 4),
        "p90": round(pct(0.9), 4),
        "mean": round(statistics.fmean(ordered), 4),
        "min": round(ordered[0], 4),
        "spread_pct": round(spread, 1),
        "samples": len(ordered),
        "rounds": len(round_medians),
    }


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int,
    rounds: int,
    iterations: int,
    budget_s: float | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, dict[str, Any]]:
    """Time each callable in interleaved rounds; returns ``{name: summarize(...)}``.

    Args:
        fns: one zero-argument callable per model, already bound to its inputs.
        warmup: untimed calls per model before the first round.
        rounds: rounds; each times every model once, starting from a rotating model.
        iterations: timed calls per model per round (at most, with ``budget_s``).
        budget_s: seconds all rounds may take; slow calls get fewer iterations, the same
            number for every model so that each is sampled alike.
    """
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    medians: dict[str, list[float]] = {n: [] for n in names}
    cost = 0.0
    for name in names:
        fastest = math.inf
        for _ in range(max(warmup, 1 if budget_s else 0)):
            t0 = clock()
            fns[name]()
            fastest = min(fastest, (clock() - t0) / 1e9)
        cost += fastest if fastest < math.inf else 0.0
    if budget_s and cost > 0:
        # +1 per block: the untimed settle call.
        iterations = max(1, min(iterations, int(budget_s / (rounds * cost)) - 1))
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection would land on whichever model happens to run
    try:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn = fns[name]
                fn()  # settle: untimed, lets the previous model's worker threads go idle
                times = []
                for _ in range(iterations):
                    t0 = clock()
                    result = fn()
                    host_ms = (clock() - t0) / 1e6
                    # A GPU call reports its own CUDA-event time; host time for the rest.
                    times.append(result.ms if isinstance(result, DeviceTime) else host_ms)
                samples[name].extend(times)
                medians[name].append(statistics.median(times))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {n: summarize(samples[n], medians[n]) for n in names}


@dataclass(frozen=True)
class DeviceTime:
    """Milliseconds measured on the device itself (CUDA events), not by the host clock."""

    ms: float


def torch_callable(model: Any, inputs: Mapping[str, Any], device: str) -> Callable[[], Any]:
    """``model(**inputs)`` in inference mode on ``device``.

    On CUDA the call is bracketed by CUDA events and synchronised, and returns the events'
    elapsed time as a :class:`DeviceTime`, so kernel time is measured, not launch time.
    """
    dev = torch.device(device)
    bound = {k: v.to(dev) for k, v in inputs.items()}
    if hasattr(model, "eval"):
        model.eval()
    if dev.type != "cuda":

        def run() -> Any:
            with torch.inference_mode():
                return model(**bound)

        return run
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run_cuda() -> DeviceTime:
        with torch.inference_mode():
            start.record()
            model(**bound)
            end.record()
        torch.cuda.synchronize(dev)
        return DeviceTime(float(start.elapsed_time(end)))

    return run_cuda


def ort_callable(session: Any, inputs: Mapping[str, Any], path: Any = "") -> Callable[[], Any]:
    """``session.run`` on numpy copies of ``inputs`` (host inputs, as a server would feed)."""

    feeds = ort_feeds(session, inputs, path)
    return lambda: session.run(None, feeds)


# ------------------------------------------------------------------ models


@dataclass
class Subject:
    """One model to measure: a torch module and/or an ONNX file, plus what is known of it."""

    name: str
    kind: str
    path: Path | None = None
    torch_model: nn.Module | None = None
    onnx_path: Path | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)  # runtime -> probe source
    onnx_export: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def runs_on(self, runtime: str) -> bool:
        return self.torch_model is not None if runtime == "torch" else self.onnx_path is not None


def latency_key(batch: int, seq: int | None) -> str:
    """Key of one shape in ``latency_ms[runtime][device]``: ``"32"`` or ``"32x128"``."""
    return f"{batch}" if seq is None else f"{batch}x{seq}"


def is_text(inputs: dict[str, torch.Tensor]) -> bool:
    return any(t.dim() == 2 and not t.is_floating_point() for t in inputs.values())


def shapes(spec: Any, example: dict[str, torch.Tensor]) -> list[tuple[int, int | None]]:
    """(batch, seq_len or None) pairs to time, in the plan's order (the first is primary)."""
    seqs: list[int | None] = (
        list(spec.seq_lengths) if spec.seq_lengths and is_text(example) else [None]
    )
    return [(b, s) for b in spec.batch_sizes for s in seqs]


def shaped(example: dict[str, torch.Tensor], batch: int, seq: int | None):

    inputs = resize_batch(example, batch)
    return resize_sequence(inputs, seq) if seq is not None else inputs


def primary(spec: Any, example: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The configuration a single latency ratio or speedup refers to: the plan's first
    runtime, device and batch size (and sequence length)."""
    batch, seq = shapes(spec, example)[0]
    return {
        "runtime": spec.runtimes[0],
        "device": spec.devices[0],
        "batch_size": batch,
        "seq_len": seq,
        "key": latency_key(batch, seq),
    }


def measure(
    subjects: list[Subject],
    spec: Any,
    example: dict[str, torch.Tensor],
    *,
    log: Callable[[str], None] = lambda _m: None,
    safe: bool = False,
) -> dict[str, Any]:
    """Peak memory and interleaved latency of every subject per ``spec`` (a ``BenchSpec``).

    Returns:
        ``{"settings", "environment", "primary", "models": {name: {"latency_ms",
        "peak_memory_bytes", "memory_errors"}}, "notes"}``.
    """
    threads = spec.threads or physical_cores()
    configs = shapes(spec, example)
    notes: list[str] = []
    if spec.seq_lengths and not is_text(example):
        notes.append("bench.seq_lengths ignored: the model has no token-id inputs")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5 * (os.cpu_count() or 1):
        notes.append(
            f"the machine was busy (1-minute load average {load:.1f} on {os.cpu_count()} CPUs): "
            "latency figures are noisier than on an idle machine"
        )
    devices = [d for d in spec.devices if d != "cuda" or torch.cuda.is_available()]
    if len(devices) < len(spec.devices):
        notes.append("device cuda skipped: no CUDA GPU is available here")
    pairs = [(r, d) for r in spec.runtimes for d in devices]
    if ("onnxruntime", "cuda") in pairs and not _ort_has_cuda():
        pairs.remove(("onnxruntime", "cuda"))
        notes.append(
            "onnxruntime on cuda skipped: it needs onnxruntime-gpu (CUDAExecutionProvider)"
        )
    models: dict[str, dict[str, Any]] = {
        s.name: {"latency_ms": {}, "peak_memory_bytes": {}, "memory_errors": {}} for s in subjects
    }
    if getattr(spec, "memory", True):
        big = shaped(example, *max(configs, key=lambda c: (c[0], c[1] or 0)))
        _probe_all(subjects, pairs, big, threads, safe, models, log)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for runtime, device in pairs:
            _time_runtime(subjects, runtime, device, configs, example, spec, threads, models, log)
    finally:
        torch.set_num_threads(previous_threads)
    settings = spec.model_dump(mode="json")
    settings.update(
        threads=threads,
        interleaved=True,
        ort_spinning=False,
        devices_measured=devices,
        memory_batch=max(configs, key=lambda c: (c[0], c[1] or 0))[0],
    )
    return {
        "settings": settings,
        "environment": environment(threads),
        "primary": primary(spec, example),
        "models": models,
        "notes": notes,
    }


def _probe_all(subjects, pairs, inputs, threads, safe, models, log) -> None:
    for s in subjects:
        for runtime, device in pairs:
            source = s.probes.get(runtime)
            # onnxruntime exposes no peak for GPU memory: no figure rather than a host one.
            if source is None or (runtime, device) == ("onnxruntime", "cuda"):
                continue
            log(f"  memory: {s.name} / {runtime} / {device}")
            got = probe_memory({**source, "safe": safe}, runtime, device, inputs, threads)
            if "error" in got:
                models[s.name]["memory_errors"][f"{runtime}/{device}"] = got["error"]
            else:
                models[s.name]["peak_memory_bytes"].setdefault(runtime, {})[device] = got[
                    "peak_bytes"
                ]


def _ort_has_cuda() -> bool:

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _time_runtime(subjects, runtime, device, configs, example, spec, threads, models, log):

    ready = [s for s in subjects if s.runs_on(runtime)]
    if not ready:
        return
    sessions, homes = {}, {}
    for s in ready:
        if runtime == "onnxruntime":
            sessions[s.name] = timing_session(s.onnx_path, device=device, threads=threads)
        else:
            homes[s.name] = _home_device(s.torch_model)
            s.torch_model.to(device)
    try:
        for batch, seq in configs:
            inputs = shaped(example, batch, seq)
            key = latency_key(batch, seq)
            log(f"  latency: {runtime} / {device} / batch {key}")
            fns = {}
            for s in ready:
                fns[s.name] = (
                    ort_callable(sessions[s.name], inputs, s.onnx_path)
                    if runtime == "onnxruntime"
                    else torch_callable(s.torch_model, inputs, device)
                )
                try:
                    fns[s.name]()
                except Exception as e:  # a shape the model cannot take: say which one
                    raise StageError(
                        f"bench: {s.name} fails in {runtime} on {device} at batch {key}: "
                        f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else e!r}",
                        hint="choose bench.batch_sizes / seq_lengths the model supports",
                    ) from None
            stats = time_interleaved(
                fns,
                warmup=spec.warmup,
                rounds=spec.rounds,
                iterations=spec.iterations,
                budget_s=spec.budget_s,
            )
            for name, st in stats.items():
                st.update(batch_size=batch, seq_len=seq)
                models[name]["latency_ms"].setdefault(runtime, {}).setdefault(device, {})[key] = st
    finally:
        for s in ready:
            if s.name in homes and homes[s.name] is not None:
                s.torch_model.to(homes[s.name])


def _home_device(model: Any) -> torch.device | None:
    return model_device(model) if isinstance(model, nn.Module) else None


# ------------------------------------------------------------------ peak memory
