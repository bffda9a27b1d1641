"""fuse-layers on the sample text transformer: file bytes, reload, ONNX, and recovery by
fine-tuning.

Ties the two blocks' feed-forward layers (``ffn_in`` and ``ffn_out``: the two most alike
pairs by cosine among them; the shipped ``plan_share.yaml``), then measures:

* the safetensors file written by compress before and after, against the bytes of the tied
  tensors (each now stored once, the second name an alias);
* ``compressor.load`` of the file: the tied parameters are one object again, outputs equal;
* ONNX with both exporters: initializers of the tied shape, file size, max |ONNX - torch|;
* accuracy (203 test paragraphs) after tying and after fine-tuning (3 epochs, lr 5e-4 as in
  the plan), and, as the control, the original fine-tuned the same way: the honest basis for
  "recovers", since more training alone can move the metric too.

    python benchmarks/share_fuse.py [--epochs 3] [--no-control]

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import onnx
import torch

import compressor
from benchmarks.share_common import context, run_finetune, run_share
from compressor.counting import count_params
from compressor.formats.compacted import save_compressed
from compressor.formats.onnx.export import export_onnx
from compressor.spec.sections import OnnxSpec

FUSE = {
    "method": "fuse-layers",
    "pairs": 2,
    "similarity": "cosine",
    "modules": [r"re:blocks\.\d+\.ffn_(in|out)"],
}


def file_bytes(ctx, model, path: Path) -> int:
    arch = ctx.loaded.architecture
    return save_compressed(model, path, architecture=arch, manifest=[]).size_bytes


def onnx_facts(model, example, path: Path, exporter: str) -> dict:
    spec = OnnxSpec(exporter=exporter, opset=18 if exporter == "dynamo" else 17)
    info = export_onnx(model, example, path, spec)
    graph = onnx.load(str(path)).graph
    shapes = ([512, 128], [128, 512])
    return {
        "bytes": info["size_bytes"],
        "ffn_initializers": sum(list(i.dims) in shapes for i in graph.initializer),
        "max_abs_diff": max(info["verification"]["max_abs_diff"].values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--no-control", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ctx, model = context("text_transformer")
    original = copy.deepcopy(model)
    result: dict = {"original": ctx.evaluate(model), "params_before": count_params(model)}
    report = run_share(ctx, model, **FUSE)
    result["pairs"] = report["pairs"]
    result["fused"] = ctx.evaluate(model)
    result["params_after"] = count_params(model)
    tied_bytes = 4 * sum(p["params"] for p in report["pairs"])
    example = {k: v.detach() for k, v in ctx.example_inputs(5).items()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = file_bytes(ctx, original, tmp / "original.safetensors")
        after = file_bytes(ctx, model, tmp / "fused.safetensors")
        loaded = compressor.load(tmp / "fused.safetensors")
        b0, b1 = loaded.blocks
        with torch.no_grad():
            reload_diff = float((loaded(**example) - model.eval()(**example)).abs().max())
        result["safetensors"] = {
            "original": before,
            "fused": after,
            "saved": before - after,
            "tied_tensor_bytes": tied_bytes,
            "reload_tied": b1.ffn_in.weight is b0.ffn_in.weight
            and b1.ffn_out.weight is b0.ffn_out.weight,
            "reload_max_abs_diff": reload_diff,
        }
        result["onnx"] = {
            f"{which}/{exporter}": onnx_facts(
                m, example, tmp / f"{which}-{exporter}.onnx", exporter
            )
            for exporter in ("dynamo", "legacy")
            for which, m in (("original", original), ("fused", model))
        }
    train = {"epochs": args.epochs, "lr": 5e-4, "keep_best": False}
    result["fused_finetuned"] = run_finetune(ctx, model, **train)["training"]["final_metric"]
    if not args.no_control:
        control = copy.deepcopy(original)
        result["original_finetuned"] = run_finetune(ctx, control, **train)["training"][
            "final_metric"
        ]
    s = result["safetensors"]
    print(f"tied pairs: {[(p['kept'], p['tied'], p['similarity']) for p in result['pairs']]}")
    print(f"params {result['params_before']:,} -> {result['params_after']:,}")
    print(
        f"safetensors {s['original']:,} -> {s['fused']:,} bytes (saved {s['saved']:,}; "
        f"tied tensors {s['tied_tensor_bytes']:,}); reload tied={s['reload_tied']}, "
        f"max diff {s['reload_max_abs_diff']:.1e}"
    )
    for key, facts in result["onnx"].items():
        print(
            f"onnx {key:<16} {facts['bytes']:>10,} bytes, {facts['ffn_initializers']} FFN "
            f"initializers, max |onnx - torch| {facts['max_abs_diff']:.1e}"
        )
    line = (
        f"accuracy: original {result['original']:.4f}, fused {result['fused']:.4f}, "
        f"fused + fine-tune {result['fused_finetuned']:.4f}"
    )
    if "original_finetuned" in result:
        line += f", original + same fine-tune {result['original_finetuned']:.4f}"
    print(line + " (final epoch, no best-epoch selection)")
    print("latency: unchanged by design (every layer still computes)")
    print("RESULT " + json.dumps(result, default=str))


if __name__ == "__main__":
    main()
