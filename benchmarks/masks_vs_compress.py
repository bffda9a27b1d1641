"""Masks are not compression: the same parameter budget, masked vs physically removed.

The sample digits CNN is pruned two ways to the same number of non-zero parameters:

* masks: ``torch.nn.utils.prune`` global L1 unstructured pruning of every conv/linear
  weight, made permanent with ``prune.remove`` (what most tutorials ship);
* compress: the prune stage (MAC target, whole channels removed, widths rounded).

Both (and the original) are exported to ONNX, verified against torch, and compared side by
side: stored parameters, non-zero parameters, MACs, ONNX file size (raw and gzipped, since
zeros compress), onnxruntime CPU latency (paired interleaved rounds) and held-out accuracy
without fine-tuning.

    python benchmarks/masks_vs_compress.py [--target 0.3] [--batches 1 256] [--threads N]

Ends with one line ``RESULT {json}`` holding every figure.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune

from compressor.counting import count_macs, count_params
from compressor.formats.onnx.export import export_onnx
from compressor.formats.onnx.session import timing_session
from compressor.measure.latency import physical_cores
from compressor.spec.sections import OnnxSpec
from compressor.stages import prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_cnn_prune_accuracy import context  # the shipped plan's model and data
from prune_latency import paired_rounds  # paired interleaved timing


def masked_copy(model: nn.Module, keep_nonzero: int) -> nn.Module:
    """Zero the smallest conv/linear weights until ``keep_nonzero`` parameters are non-zero."""
    masked = copy.deepcopy(model)
    weights = [(m, "weight") for m in masked.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = count_params(masked) - keep_nonzero
    torch_prune.global_unstructured(
        weights, pruning_method=torch_prune.L1Unstructured, amount=zeros
    )
    for module, name in weights:
        torch_prune.remove(module, name)  # bake the mask in: a plain dense weight again
    return masked.eval()


def nonzero(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.3, help="compress: MACs kept")
    parser.add_argument("--round-to", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ctx, original = context(0)
    example = ctx.example_inputs()
    ctx.stage_report = {}
    options = {
        "target": {"macs": args.target},
        "criterion": "l2",
        "scope": "global",
        "round_to": args.round_to,
    }
    compressed = prune.apply(
        copy.deepcopy(original), prune.PruneConfig.model_validate(options), ctx
    ).eval()
    models = {
        "original": original.eval(),
        "masks": masked_copy(original, count_params(compressed)),
        "compress": compressed,
    }
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, model in models.items():
            info = export_onnx(
                model, example, Path(tmp) / f"{name}.onnx", OnnxSpec(exporter="legacy", opset=17)
            )
            data = Path(info["path"]).read_bytes()
            sessions[name] = timing_session(info["path"], threads=args.threads)
            rows[name] = {
                "params_stored": count_params(model),
                "params_nonzero": nonzero(model),
                "macs": count_macs(model, example),
                "onnx_bytes": len(data),
                "onnx_gzip_bytes": len(gzip.compress(data, compresslevel=9)),
                "onnx_max_abs_diff": (info.get("verification") or {}).get("max_abs_diff_overall"),
                "accuracy": ctx.evaluate(model),
                "latency": {},
            }
        for batch in args.batches:
            for name, t in paired_rounds(
                sessions, example, batch, args.rounds, args.iterations
            ).items():
                rows[name]["latency"][batch] = t
    print(
        f"digits CNN, same non-zero parameter budget ({rows['compress']['params_nonzero']:,}); "
        f"onnxruntime CPU, {args.threads} thread(s); accuracy without fine-tuning\n"
    )
    head = f"{'':<10}{'stored':>9}{'non-zero':>10}{'MACs':>11}{'ONNX KB':>9}{'gzip KB':>9}"
    head += "".join(f"{f'b{b} ms':>9}{'x':>6}" for b in args.batches) + f"{'acc':>8}"
    print(head)
    for name, r in rows.items():
        line = (
            f"{name:<10}{r['params_stored']:>9,}{r['params_nonzero']:>10,}{r['macs']:>11,}"
            f"{r['onnx_bytes'] / 1024:>9.0f}{r['onnx_gzip_bytes'] / 1024:>9.0f}"
        )
        for b in args.batches:
            line += f"{r['latency'][b]['ms']:>9.2f}{r['latency'][b]['ratio']:>6.2f}"
        print(line + f"{r['accuracy'] * 100:>7.2f}%")
    print(
        "\nmasks: same file, same MACs, same latency as the original; compress: smaller and "
        "faster (accuracy is recovered by fine-tuning, see digits_cnn_prune_accuracy.py)"
    )
    print("RESULT " + json.dumps({"config": options, "models": rows}))


if __name__ == "__main__":
    main()
