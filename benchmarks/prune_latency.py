"""Does pruning buy the speed its MAC count promises? Measured, not inferred.

Prunes the sample digits CNN with the prune stage to several MAC targets (global and
per-layer ranking, widths rounded to 16 and to 8), exports every model to ONNX (verified
against torch), and times them in onnxruntime on the CPU, interleaved (every round times
every model, starting from a rotating one), at compute-bound batch sizes. Prints, per pruned
model, the MACs ratio, the measured latency ratio (pruned / original, p50) and their
quotient; the claim is a latency ratio within 20% of the MACs ratio.

Widths matter as much as MACs: onnxruntime's AVX-512 convolutions work on blocks of 16
channels, so a width of 72 costs what 80 does; round_to 16 is the hardware-friendly choice
there (8 for AVX2). The round_to 8 rows show the difference.

    python benchmarks/prune_latency.py [--batches 64 256] [--targets 0.5 0.3] [--threads N]

Ends with one line ``RESULT {json}`` holding every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from compressor.counting import count_macs, count_params
from compressor.formats.onnx.export import export_onnx
from compressor.formats.onnx.session import timing_session
from compressor.forward import resize_batch
from compressor.measure.latency import environment, ort_callable, physical_cores, time_interleaved
from compressor.spec.sections import OnnxSpec
from compressor.stages import prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_cnn_prune_accuracy import context  # the shipped plan's model and data


def pruned_models(targets: list[float], round_tos: list[int]) -> tuple[dict, dict]:
    """``{name: model}`` (the original first) and the example inputs."""
    ctx, original = context(0)
    example = ctx.example_inputs()
    models = {"original": original.eval()}
    for round_to in round_tos:
        for target in targets:
            for scope in ("per-layer", "global"):
                ctx, model = context(0)
                options = {
                    "target": {"macs": target},
                    "criterion": "l2",
                    "scope": scope,
                    "round_to": round_to,
                }
                ctx.stage_report = {}
                models[f"{target} {scope} /{round_to}"] = prune.apply(
                    model, prune.PruneConfig.model_validate(options), ctx
                ).eval()
    return models, example


def paired_rounds(
    sessions: dict, example: dict, batch: int, rounds: int, iterations: int
) -> dict[str, dict]:
    """Time every session at ``batch`` in interleaved rounds; per model the median latency and
    the median over rounds of its latency / the original's in the same round (paired, so
    load from other processes that comes and goes cancels out)."""
    inputs = resize_batch({k: torch.rand_like(v) for k, v in example.items()}, batch)
    fns = {n: ort_callable(s, inputs) for n, s in sessions.items()}
    names = list(fns)
    time_interleaved(fns, warmup=3, rounds=1, iterations=1)
    per_round = []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        result = time_interleaved(
            {n: fns[n] for n in order}, warmup=0, rounds=1, iterations=iterations
        )
        per_round.append({n: result[n]["p50"] for n in names})
    out = {}
    for n in names:
        ratios = sorted(r[n] / r["original"] for r in per_round)
        out[n] = {
            "ms": round(statistics.median(r[n] for r in per_round), 4),
            "ratio": round(statistics.median(ratios), 4),
            "ratio_range": [round(ratios[0], 4), round(ratios[-1], 4)],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--round-to", type=int, nargs="+", default=[16, 8])
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    threads = args.threads
    torch.set_num_threads(threads)
    models, example = pruned_models(args.targets, args.round_to)
    macs = {n: count_macs(m, example) for n, m in models.items()}
    params = {n: count_params(m) for n, m in models.items()}
    spec = OnnxSpec(exporter="legacy", opset=17)
    # Other processes on the machine distort timings (paired rounds only soften it): say so.
    load = os.getloadavg()[0]
    results = {"environment": environment(threads), "load_average": load, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sessions, sizes = {}, {}
        for i, (name, model) in enumerate(models.items()):
            info = export_onnx(model, example, Path(tmp) / f"m{i}.onnx", spec)
            sizes[name] = info["size_bytes"]
            sessions[name] = timing_session(info["path"], threads=threads)
        timings = {
            batch: paired_rounds(sessions, example, batch, args.rounds, args.iterations)
            for batch in args.batches
        }
    print(
        f"onnxruntime CPU, {threads} thread(s), {args.rounds} interleaved rounds x "
        f"{args.iterations} calls; ms = median of the rounds' medians, ratio = median over "
        f"rounds of (model / original in the same round); load average {load:.1f} on "
        f"{os.cpu_count()} CPUs\n"
    )
    head = f"{'target scope /round_to':<24}{'params':>9}{'MACs':>8}{'ONNX KB':>9}"
    for batch in args.batches:
        head += f"{f'b{batch} ms':>10}{'ratio':>7}{'/MACs':>7}"
    print(head)
    within: dict[tuple[int, int], list[bool]] = {
        (rt, b): [] for rt in args.round_to for b in args.batches
    }
    for name in models:
        mac_ratio = macs[name] / macs["original"]
        row = f"{name:<24}{params[name]:>9,}{mac_ratio:>8.3f}{sizes[name] / 1024:>9.0f}"
        entry = {
            "params": params[name],
            "macs": macs[name],
            "macs_ratio": round(mac_ratio, 4),
            "onnx_bytes": sizes[name],
            "latency": {},
        }
        for batch in args.batches:
            t = timings[batch][name]
            quotient = t["ratio"] / mac_ratio
            row += f"{t['ms']:>10.2f}{t['ratio']:>7.3f}{quotient:>7.2f}"
            entry["latency"][batch] = {**t, "ratio_over_macs": round(quotient, 3)}
            if name != "original":
                within[int(name.rsplit("/", 1)[1]), batch].append(abs(quotient - 1) <= 0.2)
        results["models"][name] = entry
        print(row)
    print()
    for (round_to, batch), hits in within.items():
        results[f"within_20pct_round_to_{round_to}_batch_{batch}"] = f"{sum(hits)}/{len(hits)}"
        print(
            f"round_to {round_to}, batch {batch}: latency ratio within 20% of the MACs ratio "
            f"for {sum(hits)}/{len(hits)} pruned models"
        )
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
