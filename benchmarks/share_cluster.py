"""cluster-weights: file bytes and accuracy of the sample models on a k-entry codebook.

For each model and k, the layer weights (tensors of >= 1024 values; biases and norms stay
float) are clustered by the share stage and the model is written by compress's safetensors
writer, which stores each clustered tensor as indices (4 bits for k <= 16, else 8) plus its
codebook. Compared with the same writer's plain float32 file of the original (no
general-purpose compression anywhere). The file is read back with ``compressor.load`` and
must give exactly the in-memory clustered model's outputs. No fine-tuning.

    python benchmarks/share_cluster.py [--models digits_cnn ...] [--ks 4 16 256]

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

import compressor
from benchmarks.share_common import context, run_share
from compressor.formats.compacted import save_compressed


def measure(name: str, ks: list[int]) -> list[dict]:
    ctx, model = context(name)
    arch = ctx.loaded.architecture
    original = ctx.evaluate(model)
    example = ctx.example_inputs(32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain = save_compressed(
            model,
            Path(tmp) / "plain.safetensors",
            architecture=arch,
            manifest=[],
            codebooks=False,
        ).size_bytes
        for k in ks:
            clustered = copy.deepcopy(model)
            report = run_share(ctx, clustered, method="cluster-weights", k=k)
            path = Path(tmp) / f"k{k}.safetensors"
            size = save_compressed(clustered, path, architecture=arch, manifest=[]).size_bytes
            loaded = compressor.load(path)
            with torch.no_grad():
                same = torch.equal(loaded(**example), clustered.eval()(**example))
            row = {
                "model": name,
                "k": k,
                "float32_bytes": plain,
                "bytes": size,
                "ratio": round(plain / size, 3),
                "clustered_tensors": len(report["tensors"]),
                "original": original,
                "accuracy": ctx.evaluate(clustered),
                "reload_identical": same,
            }
            rows.append(row)
            print(
                f"{name:<17}{k:>5}{plain:>12,}{size:>12,}{row['ratio']:>8.2f}x"
                f"{original * 100:>10.2f}{row['accuracy'] * 100:>10.2f}{same!s:>8}",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["digits_cnn", "digits_mlp", "text_transformer"]
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 16, 256])
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(
        f"{'model':<17}{'k':>5}{'float32 B':>12}{'file B':>12}{'smaller':>9}"
        f"{'orig %':>10}{'k-means %':>10}{'reload':>8}"
    )
    rows = [r for name in args.models for r in measure(name, args.ks)]
    print("storage only: same shapes and float compute, so latency is unchanged")
    print("RESULT " + json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
