"""GPU code paths, exercised with mocks on machines without a GPU (and for real on one)."""

from __future__ import annotations

import torch

from compressor.errors import StageError
from compressor.measure.latency import DeviceTime, time_interleaved, torch_callable
from compressor.run.environment import resolve_device, run_environment
from compressor.training import distributed
from compressor.training.loop import autocast_context


def test_cuda_without_gpu_is_a_clear_bad_input(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    try:
        resolve_device("cuda")
    except StageError as e:
        assert "no CUDA GPU" in str(e) and "device: auto" in e.hint
        assert e.exit_code == 2
    else:
        raise AssertionError("device: cuda without a GPU must fail")
    assert resolve_device("auto").type == "cpu"


def test_auto_picks_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda").type == "cuda"


def test_each_rank_gets_its_own_gpu():
    state = distributed.DistState(rank=1, world_size=2, local_rank=1, backend="nccl")
    assert distributed.device_for(state, torch.device("cuda")) == torch.device("cuda", 1)
    assert distributed.device_for(state, torch.device("cpu")) == torch.device("cpu")
    assert distributed.device_for(None, torch.device("cuda")) == torch.device("cuda")


def test_autocast_choices():
    assert not isinstance(autocast_context(torch.device("cpu"), "fp32"), torch.autocast)
    # fp16 autocast is a GPU feature: on CPU it is a no-op rather than an error.
    assert not isinstance(autocast_context(torch.device("cpu"), "fp16"), torch.autocast)
    bf16 = autocast_context(torch.device("cpu"), "bf16")
    assert isinstance(bf16, torch.autocast) and bf16.fast_dtype == torch.bfloat16
    with bf16:
        y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16


class _FakeEvent:
    """Stands in for torch.cuda.Event: every call 'took' 2.5 ms on the device."""

    recorded = 0

    def __init__(self, enable_timing: bool = False):
        assert enable_timing

    def record(self):
        _FakeEvent.recorded += 1

    def elapsed_time(self, other):
        return 2.5


class _HostTensor:
    def to(self, device):
        return self


def test_torch_cuda_timing_uses_cuda_events_and_synchronises(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    calls = []
    fn = torch_callable(lambda **kw: calls.append(kw), {"x": _HostTensor()}, "cuda")
    assert fn() == DeviceTime(2.5)
    assert synced and _FakeEvent.recorded >= 2
    timings = time_interleaved({"m": fn}, warmup=1, rounds=2, iterations=3)
    assert timings["m"]["p50"] == 2.5 and timings["m"]["samples"] == 6


def test_cpu_timing_uses_the_host_clock():
    ticks = iter(range(0, 10**9, 1_000_000))  # each clock read advances 1 ms
    timings = time_interleaved(
        {"m": lambda: None}, warmup=0, rounds=1, iterations=4, clock=lambda: next(ticks)
    )
    assert timings["m"]["p50"] == 1.0


def test_report_names_gpu_driver_and_versions(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    import compressor.run.environment as runner

    monkeypatch.setattr(runner, "_nvidia_driver", lambda: "570.86")
    info = run_environment(torch.device("cuda", 0), None)
    assert info["gpu"] == "NVIDIA H200" and info["driver"] == "570.86" and info["cuda"] == "12.8"
    assert info["torch"] == torch.__version__ and info["world_size"] == 1
    assert "gpu" not in run_environment(torch.device("cpu"), None)


def test_bench_on_cuda_without_gpu_skips_with_a_message(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import SAMPLES

    if torch.cuda.is_available():
        return  # on a GPU machine the real path runs instead (see benchmarks/)
    exe = Path(sys.executable).with_name("compress")
    result = subprocess.run(
        [
            str(exe),
            "bench",
            str(SAMPLES / "digits_mlp" / "model.safetensors"),
            "-a",
            "sample_models.digits_mlp.model:build",
            "--input",
            "x=1x64",
            "--device",
            "cuda",
            "--runtime",
            "torch",
            "-b",
            "1",
            "--rounds",
            "1",
            "--iterations",
            "2",
            "--no-memory",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "cuda skipped" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
