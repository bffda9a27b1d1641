"""Coverage sweep: torchvision and timm classification models, pruned 30% by ``compress run``
and by Torch-Pruning 1.6, each result checked independently.

For every model (random init, small inputs where the architecture allows):

1. analysis (fresh process): time and peak RSS of compress's graph analysis
   (``StructureGraph`` + its groups) on the example input;
2. ``compress run`` (fresh process) of a plan ``prune: {amount: 0.3}`` on the model's state
   dict, saved to safetensors, with ``architecture: benchmarks.sweep_models:build``;
3. check (fresh process): ``compressor.load`` (no pickle) of the output, its output vs the
   exported ONNX in onnxruntime, the output shape vs the original's, parameters reduced;
   then Torch-Pruning's ``MagnitudePruner`` (30%, the 1000-way classifier ignored, attention
   heads given as in its timm example) on a fresh copy: forward, output shape, parameters.

Every process runs with one thread, a wall-clock limit and an RSS limit (polled; the
process group is killed past it). Status per model: ``correct``, ``refused`` (exit 2 with a
message), ``crash`` (exit 3, internal error, killed), ``wrong`` (runs but the check fails).

    PYTHONPATH=. python benchmarks/coverage_sweep.py                 # everything
    PYTHONPATH=. python benchmarks/coverage_sweep.py --models resnet18,tv_vit_b_16
    PYTHONPATH=. python benchmarks/coverage_sweep.py --only tv --json out.json

Ends with ``RESULT {json}``: counts per status for both tools and every per-model figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GB = 1024**3


@dataclass(frozen=True)
class Spec:
    key: str
    source: str  # "tv" or "timm"
    name: str
    size: int = 64  # input height = width
    kwargs: dict[str, Any] = field(default_factory=dict)


def _tv(name: str, size: int = 64, **kw: Any) -> Spec:
    return Spec(f"tv_{name}", "tv", name, size, kw)


def _timm(name: str, size: int = 64, **kw: Any) -> Spec:
    return Spec(f"timm_{name}", "timm", name, size, kw)


# One model per torchvision classification family (the smallest variant).
TORCHVISION = [
    _tv("alexnet", 224),  # adaptive pooling to 6x6: the legacy exporter needs 6x6 in
    _tv("convnext_tiny"),
    _tv("densenet121"),
    _tv("efficientnet_b0"),
    _tv("efficientnet_v2_s"),
    _tv("googlenet"),
    _tv("inception_v3", 96, aux_logits=False),  # the aux head needs 299 px in train mode
    _tv("maxvit_t", 224),
    _tv("mnasnet0_5"),
    _tv("mobilenet_v2"),
    _tv("mobilenet_v3_small"),
    _tv("mobilenet_v3_large"),
    _tv("regnet_x_400mf"),
    _tv("regnet_y_400mf"),
    _tv("resnet18"),
    _tv("resnext50_32x4d"),
    _tv("shufflenet_v2_x0_5"),
    _tv("squeezenet1_1"),
    _tv("swin_t"),
    _tv("swin_v2_t"),
    _tv("vgg11_bn", 224),  # adaptive pooling to 7x7, as above
    _tv("vit_b_16", 224),
    _tv("wide_resnet50_2"),
]

# timm models across families; transformers at a small image size where timm allows it.
TIMM = [
    _timm("resnet10t"),
    _timm("efficientnet_b0"),
    _timm("mobilenetv3_small_050"),
    _timm("mobilenetv4_conv_small"),
    _timm("convnext_atto"),
    _timm("vit_tiny_patch16_224", 64, img_size=64),
    _timm("deit_tiny_distilled_patch16_224", 64, img_size=64),
    _timm("swin_tiny_patch4_window7_224", 224),
    _timm("regnetx_002"),
    _timm("densenet121"),
    _timm("cspresnet50"),
    _timm("ghostnet_050"),
    _timm("mixnet_s"),
    _timm("rexnet_100"),
    _timm("levit_128s", 224),
    _timm("poolformer_s12"),
    _timm("convmixer_768_32"),
    _timm("coat_lite_tiny", 224),
    _timm("xcit_nano_12_p16_224", 64, img_size=64),
    _timm("beit_base_patch16_224", 64, img_size=64, depth=2),
    _timm("edgenext_xx_small"),
    _timm("mobilevit_xxs"),
    _timm("efficientformer_l1", 224),
    _timm("repvgg_a0"),
    _timm("dla46_c"),
    _timm("hrnet_w18_small"),
    _timm("nf_regnet_b0"),
    _timm("tresnet_m"),
    _timm("resmlp_12_224", 64, img_size=64),
    _timm("mixer_s16_224", 64, img_size=64),
    _timm("lcnet_050"),
    _timm("pvt_v2_b0"),
]

ALL = {s.key: s for s in TORCHVISION + TIMM}


# ---------------------------------------------------------------------------- processes


def _rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (0 once gone)."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(_rss(int(c)) for c in children)


def run_limited(cmd: list[str], *, timeout: float, mem_bytes: int, env: dict[str, str]):
    """Run ``cmd`` in its own process group; kill it past ``timeout`` s or ``mem_bytes`` RSS.

    Returns (returncode, output, seconds, peak_rss_bytes, killed_reason or None).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    peak = 0
    killed: list[str] = []

    def watch() -> None:
        nonlocal peak
        while proc.poll() is None:
            rss = _rss(proc.pid)
            peak = max(peak, rss)
            reason = None
            if rss > mem_bytes:
                reason = (
                    f"killed: resident memory {rss / GB:.1f} GB > limit {mem_bytes / GB:.1f} GB"
                )
            elif time.perf_counter() - start > timeout:
                reason = f"killed: over the {timeout:.0f} s limit"
            if reason:
                killed.append(reason)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output = proc.communicate()[0]
    watcher.join()
    return proc.returncode, output, time.perf_counter() - start, peak, (killed or [None])[0]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "COLUMNS": "200",
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "ignore",
    }


def _json_line(output: str, tag: str) -> dict[str, Any] | None:
    for line in reversed(output.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])
    return None


def _message(output: str) -> str:
    """The lines of a failed run a user would read: its error and hint."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    keep = [
        ln
        for ln in lines
        if ln.lower().startswith(("error", "internal error", "hint", "fix", "stage"))
        or "Error" in ln
    ]
    return " | ".join((keep or lines)[-3:])[:400]


# ---------------------------------------------------------------------------- worker side


def _threads() -> None:
    import torch

    torch.set_num_threads(1)


def _build(spec: Spec):
    from benchmarks.sweep_models import build

    return build(spec.source, spec.name, calibrate=spec.size, **spec.kwargs)


def _example(spec: Spec):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, spec.size, spec.size, generator=g)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _out(model, x):
    import torch

    from compressor.graph import flatten_tensors

    with torch.no_grad():
        return flatten_tensors(model(x))[0]


def phase_prepare(spec: Spec, work: Path) -> dict[str, Any]:
    """Save the model's state dict and write the plan; record the original's figures."""
    import safetensors.torch
    import torch

    model = _build(spec)
    x = _example(spec)
    y = _out(model, x)
    torch.save({"x": x, "y": y}, work / "reference.pt")
    safetensors.torch.save_model(model, str(work / "model.safetensors"))
    kwargs = {"source": spec.source, "name": spec.name, "calibrate": spec.size, **spec.kwargs}
    plan = {
        "version": 1,
        "seed": 0,
        "model": {
            "checkpoint": str(work / "model.safetensors"),
            "architecture": "benchmarks.sweep_models:build",
            "kwargs": kwargs,
            # Images in [0, 1]: what build(calibrate=...) set the batch-norm statistics from
            # and what the check below feeds. Without a range compress's synthetic example is
            # standard normal, outside the calibrated range (ConvMixer's logits reach 6e8).
            "inputs": {
                "x": {
                    "shape": [1, 3, spec.size, spec.size],
                    "dtype": "float32",
                    "low": 0.0,
                    "high": 1.0,
                }
            },
        },
        "stages": [{"prune": {"amount": 0.3}}],
        # The legacy exporter: several times faster here than the torch.export-based one
        # (which "auto" tries first); both are checked in onnxruntime the same way.
        "export": {"formats": ["safetensors", "onnx"], "onnx": {"exporter": "legacy"}},
    }
    (work / "plan.json").write_text(json.dumps(plan, indent=1))
    # YAML is a superset of JSON: the plan file is valid YAML as written.
    (work / "plan.yaml").write_text(json.dumps(plan, indent=1))
    return {
        "params": _params(model),
        "fp32_bytes": 4 * _params(model),
        "out_shape": list(y.shape),
    }


def phase_analysis(spec: Spec, work: Path) -> dict[str, Any]:
    """Time and peak RSS of the graph analysis alone, in this fresh process."""
    import resource

    from compressor.graph import StructureGraph

    model = _build(spec)
    x = _example(spec)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    graph = StructureGraph(model, {"x": x})
    groups = graph.groups()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    prunable = graph.prunable()
    unsupported = sorted({u for g in groups for u in g.unsupported})
    return {
        "analysis_s": round(seconds, 2),
        "analysis_peak_gb": round(peak / GB, 3),
        "analysis_above_base_gb": round((peak - base) / GB, 3),
        "groups": len(groups),
        "prunable": len(prunable),
        "unsupported": unsupported[:5],
    }


def phase_check(spec: Spec, work: Path) -> dict[str, Any]:
    """Independent check of compress's output: reload without pickle, ONNX, shape, params."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import compressor

    ref = torch.load(work / "reference.pt")
    x, y = ref["x"], ref["y"]
    out = work / "out"
    result: dict[str, Any] = {}
    try:
        model = compressor.load(str(out / "model.safetensors")).eval()
        z = _out(model, x)
        result["params_after"] = _params(model)
        result["shape_ok"] = tuple(z.shape) == tuple(y.shape)
        sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        o = sess.run(None, feed)[0]
        diff = float(np.abs(o - z.numpy()).max()) if o.shape == tuple(z.shape) else float("inf")
        result["onnx_max_diff"] = diff
        scale = float(np.abs(z.numpy()).max()) or 1.0
        result["onnx_ok"] = diff <= 1e-3 * max(1.0, scale)
    except Exception as e:  # the check itself must report, never crash the sweep
        result["check_error"] = f"{type(e).__name__}: {e}"[:300]
    return result


def phase_tp(spec: Spec, work: Path) -> dict[str, Any]:
    """Torch-Pruning 1.6 magnitude pruning, 30%, classifier ignored; checked the same way."""
    import torch
    import torch_pruning as tp

    model = _build(spec)
    x = _example(spec)
    y = _out(model, x)
    before = _params(model)
    classes = y.shape[-1]
    ignored = [
        m
        for m in model.modules()
        if getattr(m, "out_features", None) == classes
        or (isinstance(m, torch.nn.Conv2d) and m.out_channels == classes)
    ]
    # Attention heads as in Torch-Pruning's own timm example: a qkv Linear and num_heads.
    heads = {
        m.qkv: m.num_heads
        for m in model.modules()
        if isinstance(getattr(m, "qkv", None), torch.nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
    }
    start = time.perf_counter()
    try:
        pruner = tp.pruner.MagnitudePruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.3,
            ignored_layers=ignored,
            num_heads=heads,
        )
        pruner.step()
        for m in model.modules():
            qkv = getattr(m, "qkv", None)
            if qkv in heads:
                m.num_heads = pruner.num_heads.get(qkv, m.num_heads)
                if hasattr(m, "head_dim"):
                    m.head_dim = qkv.out_features // (3 * m.num_heads)
                if hasattr(m, "attn_dim"):  # timm reshapes the attention output to it
                    m.attn_dim = qkv.out_features // 3
        z = _out(model, x)
    except Exception as e:
        return {
            "tp_status": "crash",
            "tp_message": f"{type(e).__name__}: {e}"[:300],
            "tp_s": round(time.perf_counter() - start, 2),
        }
    after = _params(model)
    ok = tuple(z.shape) == tuple(y.shape) and after < before
    return {
        "tp_status": "correct" if ok else "wrong",
        "tp_message": ""
        if ok
        else f"shape {tuple(z.shape)} vs {tuple(y.shape)}, params {after}/{before}",
        "tp_params_ratio": round(after / before, 3),
        "tp_s": round(time.perf_counter() - start, 2),
    }


def phase_setup(spec: Spec, work: Path) -> dict[str, Any]:
    """The state dict and the plan (printed at once, so that they survive the analysis being
    killed), then the graph analysis on a fresh copy."""
    import gc

    prep = phase_prepare(spec, work)
    print("PREP " + json.dumps(prep), flush=True)
    gc.collect()
    try:
        analysis = phase_analysis(spec, work)
    except Exception as e:  # recorded; compress run then shows how a user meets it
        analysis = {"analysis_error": f"{type(e).__name__}: {e}"[:300]}
    return {**prep, **analysis}


# compress's check and Torch-Pruning run in separate processes: Torch-Pruning past the
# memory or time limit (Swin, MaxViT, ReXNet) must not take the check of compress with it.
PHASES = {"setup": phase_setup, "check": phase_check, "tp": phase_tp}


def worker(key: str, phase: str, work: Path) -> None:
    _threads()
    import warnings

    warnings.simplefilter("ignore")
    try:
        result = PHASES[phase](ALL[key], work)
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {e}"[:400]}
    print("PHASE " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- driver


def sweep_one(spec: Spec, *, timeout: float, mem_gb: float, keep: bool) -> dict[str, Any]:
    env = _env()
    row: dict[str, Any] = {"model": spec.key}
    tmp = tempfile.mkdtemp(prefix=f"sweep_{spec.key}_")
    work = Path(tmp)
    me = [sys.executable, str(Path(__file__).resolve())]

    def phase(name: str, limit_gb: float) -> dict[str, Any]:
        rc, output, secs, peak, killed = run_limited(
            [*me, "--worker", spec.key, "--phase", name, "--work", tmp],
            timeout=timeout,
            mem_bytes=int(limit_gb * GB),
            env=env,
        )
        data = _json_line(output, "PHASE")
        if data is None:
            data = _json_line(output, "PREP") or {}
            data["error" if not data else "analysis_error"] = (
                killed or f"exit {rc}: {_message(output)}"
            )
        data[f"{name}_wall_s"] = round(secs, 1)
        data[f"{name}_rss_gb"] = round(peak / GB, 3)
        return data

    prep = phase("setup", max(mem_gb, 8.0))
    row.update(prep)
    if "params" not in prep:
        row.update(status="setup-failed", message=prep.get("error"), tp_status="-")
        return row
    limit = max(mem_gb, 2 + 8 * prep["fp32_bytes"] / GB)

    rc, output, secs, peak, killed = run_limited(
        [
            sys.executable,
            "-m",
            "cli.main",
            "run",
            str(work / "plan.yaml"),
            "--out",
            str(work / "out"),
            "--no-bench",
        ],
        timeout=timeout,
        mem_bytes=int(limit * GB),
        env=env,
    )
    row.update(compress_s=round(secs, 1), compress_rss_gb=round(peak / GB, 3), exit=rc)
    if killed:
        row.update(status="crash", message=killed)
    elif rc == 2:
        row.update(status="refused", message=_message(output))
    elif rc != 0:
        row.update(status="crash", message=_message(output))
    verify = phase("check", limit) if (work / "out" / "model.safetensors").exists() else {}
    theirs = phase("tp", limit)
    if "tp_status" not in theirs:  # killed at the limit, or failed outside pruning
        theirs.update(tp_status="crash", tp_message=theirs.get("error"))
    theirs.pop("error", None)
    row.update(verify)
    row.update(theirs)
    if rc == 0 and not killed:
        if "check_error" in verify or "error" in verify:
            row.update(status="wrong", message=verify.get("check_error") or verify.get("error"))
        elif not verify.get("shape_ok"):
            row.update(status="wrong", message="output shape changed")
        elif not verify["onnx_ok"]:
            row.update(status="wrong", message=f"ONNX differs by {verify['onnx_max_diff']:.2e}")
        elif verify["params_after"] >= prep["params"]:
            row.update(status="wrong", message="exit 0 but no parameter removed (1.00x)")
        else:
            row.update(status="correct", message="")
        if "params_after" in verify:
            row["params_ratio"] = round(verify["params_after"] / prep["params"], 3)
    if not keep:
        subprocess.run(["rm", "-rf", tmp], check=False)
    else:
        row["work"] = tmp
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':42} {'params':>7} {'compress':9} {'ratio':>5} {'TP':8} {'ratio':>5} "
        f"{'ana s':>6} {'ana GB':>6} {'run s':>6} {'run GB':>6}  message"
    )
    lines = [head, "-" * len(head)]
    nan = float("nan")
    for r in rows:
        msg = r.get("message") or ""
        if r.get("tp_status") not in ("correct", None, "-"):
            msg += ("  || TP: " if msg else "TP: ") + (r.get("tp_message") or "")
        lines.append(
            f"{r['model']:42} {r.get('params', 0) / 1e6:6.1f}M {r.get('status', '?'):9} "
            f"{r.get('params_ratio', nan):5.2f} {r.get('tp_status', '?'):8} "
            f"{r.get('tp_params_ratio', nan):5.2f} "
            f"{r.get('analysis_s', nan):6.1f} {r.get('analysis_peak_gb', nan):6.2f} "
            f"{r.get('compress_s', nan):6.1f} {r.get('compress_rss_gb', nan):6.2f}"
            f"  {msg[:160]}"
        )
    return "\n".join(lines)


def _counts(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get(key, "?")] = counts.get(r.get(key, "?"), 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated keys (tv_resnet18) or names (resnet18)")
    ap.add_argument("--only", choices=["tv", "timm"], help="one library's models")
    ap.add_argument("--jobs", type=int, default=1, help="models at a time (default 1)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per process")
    ap.add_argument("--mem-gb", type=float, default=4.0, help="RSS limit per process (min)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--keep", action="store_true", help="keep each model's work folder")
    ap.add_argument("--list", action="store_true", help="print the model keys and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.phase, args.work)
        return 0
    specs = list(ALL.values())
    if args.only:
        specs = [s for s in specs if s.source == args.only]
    if args.models:
        wanted = [w.strip() for w in args.models.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in ALL and not any(s.name == w for s in specs)]
        if unknown:
            ap.error(f"unknown models {unknown}; see --list")
        # In the order given, so that a long sweep can run the interesting models first.
        specs = [s for w in wanted for s in specs if w in (s.key, s.name)]
    if args.list:
        print("\n".join(s.key for s in specs))
        return 0
    rows: list[dict[str, Any]] = []
    from concurrent.futures import ThreadPoolExecutor

    partial = args.json.with_suffix(".rows.jsonl") if args.json else None
    lock = threading.Lock()

    def one(spec: Spec) -> dict[str, Any]:
        row = sweep_one(spec, timeout=args.timeout, mem_gb=args.mem_gb, keep=args.keep)
        if partial is not None:  # rows as they finish: a long sweep cut short keeps them
            with lock, partial.open("a") as f:
                f.write(json.dumps(row) + "\n")
        print(
            f"[{spec.key}] compress={row.get('status')} tp={row.get('tp_status')} "
            f"{(row.get('message') or '')[:200]}",
            flush=True,
        )
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(one, specs))
    print()
    print(_table(rows))
    result = {
        "compress": _counts(rows, "status"),
        "torch_pruning": _counts(rows, "tp_status"),
        "torchvision": _counts([r for r in rows if r["model"].startswith("tv_")], "status"),
        "timm": _counts([r for r in rows if r["model"].startswith("timm_")], "status"),
        "compress_missing_where_tp_correct": [
            r["model"]
            for r in rows
            if r.get("tp_status") == "correct" and r.get("status") != "correct"
        ],
        "models": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
