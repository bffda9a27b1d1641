"""onnxruntime prefill latency of the decoder-with-past graph from each exporter (legacy
TorchScript vs torch.export), for an original causal LM and its compressed copy, interleaved.

    PYTHONPATH=tests/compat python benchmarks/decoder_exporters.py \\
        --original sample_models/tiny_llama/model --compressed out/tiny_llama/hf

Both graphs are verified against torch before timing (export_decoder_onnx). Prints node
counts, p50 prefill milliseconds and the compressed/original ratio per exporter; ends with
one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE_OPS = {
    "Shape", "Gather", "Unsqueeze", "Concat", "Constant", "Cast", "Slice", "Squeeze",
    "Reshape", "Equal", "Where", "ConstantOfShape", "Range", "Expand", "Div",
}  # fmt: skip


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", required=True, help="Hugging Face causal-LM folder")
    parser.add_argument("--compressed", required=True, help="Hugging Face causal-LM folder")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnx
    from transformers import AutoModelForCausalLM

    from compressor.formats.onnx.decoder import export_decoder_onnx
    from compressor.formats.onnx.session import timing_session
    from compressor.measure.lm import ort_prefill_fn, prompt_ids

    models = {
        name: AutoModelForCausalLM.from_pretrained(path).eval()
        for name, path in (("original", args.original), ("compressed", args.compressed))
    }
    sessions, nodes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("legacy", "dynamo"):
            for name, model in models.items():
                path = Path(tmp) / f"{name}_{kind}.onnx"
                export_decoder_onnx(model, path, exporter=kind)  # raises unless verified
                graph = onnx.load(str(path), load_external_data=False).graph
                ops = collections.Counter(n.op_type for n in graph.node)
                nodes[(name, kind)] = {
                    "nodes": len(graph.node),
                    "shape_ops": sum(c for op, c in ops.items() if op in SHAPE_OPS),
                }
                sessions[(name, kind)] = timing_session(path, threads=args.threads)
        vocab = models["original"].config.vocab_size
        ids = prompt_ids(vocab, 1, args.prompt_len)
        calls = {key: ort_prefill_fn(s, ids) for key, s in sessions.items()}
        for call in calls.values():
            for _ in range(args.iterations):
                call()
        times: dict = {key: [] for key in calls}
        for _ in range(args.rounds):
            for key, call in calls.items():  # interleaved: every round times every graph
                t0 = time.perf_counter()
                for _ in range(args.iterations):
                    call()
                times[key].append((time.perf_counter() - t0) / args.iterations * 1e3)
    result: dict = {"prompt_len": args.prompt_len, "threads": args.threads, "exporters": {}}
    print(f"{'exporter':10s} {'model':11s} {'nodes':>6s} {'shape ops':>9s} {'p50 ms':>8s}")
    for kind in ("legacy", "dynamo"):
        row = {}
        for name in models:
            p50 = statistics.median(times[(name, kind)])
            row[name] = {**nodes[(name, kind)], "prefill_p50_ms": round(p50, 3)}
            print(
                f"{kind:10s} {name:11s} {row[name]['nodes']:6d} {row[name]['shape_ops']:9d} "
                f"{p50:8.2f}"
            )
        row["ratio"] = round(
            row["compressed"]["prefill_p50_ms"] / row["original"]["prefill_p50_ms"], 3
        )
        print(f"{kind:10s} compressed / original prefill: {row['ratio']:.3f}")
        result["exporters"][kind] = row
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
