"""Peak-memory probe: a fresh process per (model, runtime) that loads the model, releases the
loader's transient copies, then runs it; the figure is the peak resident set while serving
(Linux VmHWM, reset after loading) over the post-import baseline, so neither another model's
allocations nor a loader's one-off copies hide or add anything.

Run as ``python -m compressor.measure.memory_probe PROBE.json`` it is the probe itself. The
probe imports only what its runtime needs: onnxruntime probes never import torch, which is
why this module defers torch and the model loaders (which import torch) to the functions that
need them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.numpy import load_file, save_file


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def probe_memory(
    source: dict[str, Any],
    runtime: str,
    device: str,
    inputs: Mapping[str, Any],
    threads: int,
    timeout: float = 600,
) -> dict[str, Any]:
    """Peak memory of ``source`` under ``runtime`` in a fresh process.

    Args:
        source: ``{"kind": "onnx" | "compressed", "path": ...}`` or ``{"kind": "plan_model",
            "spec": <ModelSpec as JSON>, "base_dir": ..., "safe": bool}``.
        inputs: the named inputs (torch tensors) of one call, e.g. at the largest batch.

    Returns:
        ``{"peak_bytes", "model_bytes", "method"}``, or ``{"error": ...}`` when the probe
        could not run (the report then shows no figure rather than a wrong one).
    """
    with tempfile.TemporaryDirectory(prefix="compress-mem-") as tmp:
        feeds = Path(tmp) / "inputs.safetensors"
        save_file({k: v.detach().cpu().contiguous().numpy() for k, v in inputs.items()}, str(feeds))
        job = Path(tmp) / "probe.json"
        job.write_text(
            json.dumps(
                {
                    "source": source,
                    "runtime": runtime,
                    "device": device,
                    "inputs": str(feeds),
                    "threads": threads,
                }
            )
        )
        try:
            done = subprocess.run(
                [sys.executable, "-m", "compressor.measure.memory_probe", str(job)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"memory probe timed out after {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"error": f"memory probe failed: {tail}"}
    return json.loads(lines[-1][len("PROBE ") :])


def _probe_main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    source, runtime, device = job["source"], job["runtime"], job["device"]
    arrays = load_file(job["inputs"])
    # Everything imported before the baseline, so that only the model is counted.
    if runtime == "onnxruntime":
        import onnxruntime as ort  # deferred: a torch probe must not load onnxruntime

        options = ort.SessionOptions()
        options.intra_op_num_threads = job["threads"]
        options.inter_op_num_threads = 1
        providers = (["CUDAExecutionProvider"] if device == "cuda" else []) + [
            "CPUExecutionProvider"
        ]
    else:
        import torch  # deferred: an onnxruntime probe must not load torch

        torch.set_num_threads(job["threads"])
    gc.collect()
    exact = _reset_peak()
    base = _status_kb("VmRSS") or 0
    if runtime == "onnxruntime":
        session = ort.InferenceSession(source["path"], options, providers=providers)
        feeds = {i.name: arrays[i.name] for i in session.get_inputs()}

        def run() -> Any:
            return session.run(None, feeds)
    else:
        model = _load_torch_source(source).to(device).eval()
        inputs = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}

        def run() -> Any:
            with torch.inference_mode():
                return model(**inputs)

    load_peak = _status_kb("VmHWM") or 0
    # Loaders differ in their transient copies (from_pretrained vs a state-dict load), which
    # a server pays once: hand freed memory back, then measure what serving holds and needs.
    gc.collect()
    _malloc_trim()
    loaded = _status_kb("VmRSS") or 0
    exact = _reset_peak() and exact
    if device == "cuda" and runtime == "torch":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        run()
    peak = _status_kb("VmHWM") or 0
    result = {
        "peak_bytes": max(0, peak - base),
        "model_bytes": max(0, loaded - base),
        "load_peak_bytes": max(0, load_peak - base),
        "method": "VmHWM while serving, over the post-import baseline"
        if exact
        else "VmHWM without reset (includes import and load peaks)",
    }
    if runtime == "torch" and device == "cuda":
        result = {
            "peak_bytes": int(torch.cuda.max_memory_allocated()),
            "model_bytes": None,
            "method": "torch.cuda.max_memory_allocated",
        }
    print("PROBE " + json.dumps(result), flush=True)


def _load_torch_source(source: dict[str, Any]) -> Any:
    # Deferred: the loaders import torch, which an onnxruntime probe must not load.
    from compressor.formats.loading import load_model
    from compressor.formats.reload import load
    from compressor.spec.sections import ModelSpec

    if source["kind"] == "compressed":
        return load(source["path"], safe=source.get("safe", False))
    if source["kind"] == "plan_model":
        spec = ModelSpec.model_validate(source["spec"])
        return load_model(spec, Path(source["base_dir"]), safe=source.get("safe", False)).model
    raise ValueError(f"unknown probe source {source['kind']!r}")


if __name__ == "__main__":
    _probe_main(sys.argv[1])
