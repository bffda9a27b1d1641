"""Generation speed of an original and a compressed Hugging Face causal LM, side by side:
prefill latency (batch x prompt length) and decode tokens/s with the KV cache, in torch and
onnxruntime (CPU), plus KV-cache bytes per token, timed interleaved in one run.

Both folders are loaded with ``AutoModelForCausalLM.from_pretrained`` and exported to ONNX
with past key/values (``compressor.onnx_decoder``), verified against torch at prefill and
over 8 decode steps before they are timed.

    python benchmarks/lm_generation.py ORIGINAL_DIR COMPRESSED_DIR
    python benchmarks/lm_generation.py a/ b/ --prefill 1x128 --prefill 8x128 --new-tokens 64
    python benchmarks/lm_generation.py --demo        # two tiny random Llamas, widths 128/64

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def shape(text: str) -> tuple[int, int]:
    batch, _, length = text.lower().partition("x")
    try:
        return int(batch), int(length)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BATCHxLENGTH, e.g. 1x128") from None


def load(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from compressor.errors import CheckpointError

    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder} holds no config.json, so it is not a Hugging Face model folder",
            hint="give the folders save_pretrained wrote (or compress's hf/ export)",
        )
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def demo_folders(root: Path) -> tuple[Path, Path]:
    """Two random Llamas saved as HF folders: hidden 128 / MLP 344 / 4 layers / 8 query and
    4 key-value heads, and the same at half the width (hidden 64, MLP 172, 4 / 2 heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folders = []
    for name, hidden, mlp, heads, kv in (
        ("original", 128, 344, 8, 4),
        ("compressed", 64, 172, 4, 2),
    ):
        torch.manual_seed(0)
        config = LlamaConfig(
            hidden_size=hidden,
            intermediate_size=mlp,
            num_hidden_layers=4,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=16,
            vocab_size=512,
            max_position_embeddings=1024,
        )
        folder = root / name
        LlamaForCausalLM(config).save_pretrained(folder)
        folders.append(folder)
    return folders[0], folders[1]


def table(result: dict[str, Any], ratios: dict[str, Any], spec: Any) -> str:
    models = result["models"]
    names = list(models)
    rows = [("figure", *names, "ratio")]
    for runtime in ("torch", "onnxruntime"):
        for b, s in spec.prefill_shapes:
            key = f"{b}x{s}"
            cells = [
                models[n]["prefill_ms"].get(runtime, {}).get(key, {}).get("p50") for n in names
            ]
            ratio = ratios["prefill_latency"].get(runtime, {}).get(key)
            rows.append((f"prefill ms {runtime} {key}", *cells, ratio))
        cells = [models[n]["decode"].get(runtime, {}).get("tokens_per_s") for n in names]
        label = f"decode tok/s {runtime} b{spec.decode_batch} +{spec.new_tokens}"
        rows.append((label, *cells, ratios["decode_tokens_per_s"].get(runtime)))
    kv = [models[n]["kv_cache"]["bytes_per_token"] for n in names]
    rows.append(("KV bytes/token", *kv, ratios["kv_bytes_per_token"]))
    rows.append(("params", *[models[n]["params"] for n in names], ratios["params"]))
    text = [tuple("-" if c is None else str(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(text[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("original", type=Path, nargs="?")
    parser.add_argument("compressed", type=Path, nargs="?")
    parser.add_argument("--demo", action="store_true", help="two tiny random Llamas")
    parser.add_argument("--prefill", type=shape, action="append", help="BATCHxLENGTH (repeat)")
    parser.add_argument("--decode-batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens before decoding")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--exporter", default="legacy", choices=["legacy", "dynamo", "auto"])
    parser.add_argument("--onnx-dir", type=Path, default=None, help="keep the ONNX files here")
    parser.add_argument("--runtimes", default="torch,onnxruntime")
    args = parser.parse_args(argv)
    if not args.demo and (args.original is None or args.compressed is None):
        parser.error("give ORIGINAL_DIR and COMPRESSED_DIR, or --demo")

    from transformers.utils import logging as hf_logging

    from compressor.counting import count_params
    from compressor.formats.onnx.decoder import export_decoder_onnx
    from compressor.measure.lm import GenerationBenchSpec, generation_ratios, measure_generation

    hf_logging.disable_progress_bar()  # the table is the output
    torch.set_num_threads(1)  # loading and export; the measurement sets its own threads
    with tempfile.TemporaryDirectory(prefix="lm-gen-") as tmp:
        tmp_dir = Path(tmp)
        original, compressed = (
            demo_folders(tmp_dir) if args.demo else (args.original, args.compressed)
        )
        models = {"original": load(original), "compressed": load(compressed)}
        runtimes = tuple(r.strip() for r in args.runtimes.split(",") if r.strip())
        onnx_dir = args.onnx_dir or tmp_dir / "onnx"
        exports: dict[str, Any] = {}
        paths: dict[str, str] = {}
        if "onnxruntime" in runtimes:
            for name, model in models.items():
                t0 = time.perf_counter()
                got = export_decoder_onnx(model, onnx_dir / f"{name}.onnx", exporter=args.exporter)
                paths[name] = got["path"]
                exports[name] = {
                    "path": got["path"] if args.onnx_dir else None,  # None: a temp file
                    "exporter": got["exporter"],
                    "seconds": round(time.perf_counter() - t0, 2),
                    "max_abs_diff": got["verification"]["max_abs_diff"],
                    "decode_steps_verified": len(got["verification"]["decode"]),
                }
                print(
                    f"exported {name}: {got['exporter']}, max |diff| vs torch "
                    f"{got['verification']['max_abs_diff']:.2g} over prefill + 8 decode steps",
                    flush=True,
                )
        spec = GenerationBenchSpec(
            prefill_shapes=tuple(args.prefill or [(1, 128)]),
            decode_batch=args.decode_batch,
            decode_prompt_len=args.prompt,
            new_tokens=args.new_tokens,
            rounds=args.rounds,
            iterations=args.iterations,
            threads=args.threads,
        )
        result = measure_generation(
            models,
            spec,
            onnx_paths=paths,
            runtimes=runtimes,
            log=lambda m: print(m, flush=True),
        )
        for name, model in models.items():
            result["models"][name]["params"] = count_params(model)
            result["models"][name]["folder"] = str(original if name == "original" else compressed)
        ratios = generation_ratios(result, "original", "compressed")
        ratios["params"] = round(
            result["models"]["compressed"]["params"] / result["models"]["original"]["params"], 3
        )
        print()
        print(table(result, ratios, spec))
        for note in result["notes"]:
            print(f"note: {note}")
        summary = {**result, "ratios": ratios, "exports": exports}
        print("RESULT " + json.dumps(summary, default=str))
        return summary


if __name__ == "__main__":
    main()
