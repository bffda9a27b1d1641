"""Depth vs width pruning of the tiny Llama at (about) equal parameters, side by side: each
variant is pruned and distilled with the same plan and the same number of steps
(``sample_models/tiny_llama/plan.yaml``, only its prune stage changed), then held-out
perplexity, agreement with the original, prefill latency and KV-cache decode speed
(onnxruntime and torch, CPU) are measured, all models interleaved in one timing run.

* depth: half of the 8 layers (block influence) and half of the MLP width: 0.484x.
* width: a quarter of the hidden size, 55% of the MLP width and a quarter of the query heads
  within each key/value group, all 8 layers kept: 0.486x.

    python benchmarks/tiny_llama_depth_width.py                  # 400 distillation steps each
    python benchmarks/tiny_llama_depth_width.py --steps 1400     # the plan's full budget

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAN = ROOT / "sample_models" / "tiny_llama" / "plan.yaml"
VARIANTS = {
    "depth": "{layers: 4, ffn: 0.5, criterion: activation}",
    "width": "{hidden: 0.25, ffn: 0.55, heads: 0.25, gqa: within, criterion: activation}",
}


def run_variant(name: str, prune: str, steps: int, out: Path) -> dict[str, Any]:
    from compressor.plan.load import load_plan
    from compressor.run.runner import run_plan

    overrides = [
        f"stages.0.prune={prune}",
        f"stages.1.distill.max_steps={steps}",
        "export.formats=[safetensors, hf, onnx]",
        "bench.enabled=false",
        "gates={}",
    ]
    t0 = time.perf_counter()
    result = run_plan(load_plan(PLAN, overrides), out_dir=out, quiet=True)
    seconds = time.perf_counter() - t0
    report = result.report
    distill = report["stages"][1]
    return {
        "variant": name,
        "prune": prune,
        "params_ratio": report["ratios"]["params"],
        "params": report["models"]["compressed"]["params"],
        "ppl_after_prune": report["stages"][0]["metric"],
        "heldout_ppl": report["metric"]["after"],
        "original_ppl": report["metric"]["before"],
        "next_token_agreement": report["metric"]["also"]["next_token_agreement"]["after"],
        "distill_steps": distill["training"]["steps"],
        "distill_seconds": distill["seconds"],
        "run_seconds": round(seconds, 1),
        "hf": str(out / "hf"),
        "onnx_with_past": report["artifacts"]["onnx_with_past"]["path"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="distillation steps per variant")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    from transformers import AutoModelForCausalLM

    from compressor.formats.onnx.decoder import export_decoder_onnx
    from compressor.measure.lm import GenerationBenchSpec, generation_ratios, measure_generation

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="depth-width-") as tmp:
        rows = [run_variant(n, p, args.steps, Path(tmp) / n) for n, p in VARIANTS.items()]
        for row in rows:
            print(
                f"{row['variant']}: {row['params_ratio']:.3f}x params, held-out perplexity "
                f"{row['heldout_ppl']:.1f} after {row['distill_steps']} steps",
                flush=True,
            )
        original = AutoModelForCausalLM.from_pretrained(PLAN.parent / "model").eval()
        models = {"original": original}
        paths = {"original": export_decoder_onnx(original, Path(tmp) / "original.onnx")["path"]}
        for row in rows:
            models[row["variant"]] = AutoModelForCausalLM.from_pretrained(row["hf"]).eval()
            paths[row["variant"]] = row["onnx_with_past"]
        spec = GenerationBenchSpec(
            prefill_shapes=((1, 128),),
            decode_prompt_len=32,
            new_tokens=32,
            rounds=args.rounds,
            iterations=5,
            threads=args.threads,
        )
        speed = measure_generation(models, spec, onnx_paths=paths)
    for row in rows:
        r = generation_ratios(speed, "original", row["variant"])
        row["decode_ratio"] = r["decode_tokens_per_s"]
        row["prefill_ratio"] = {k: v["1x128"] for k, v in r["prefill_latency"].items()}
        row["kv_ratio"] = r["kv_bytes_per_token"]
    print()
    head = (
        f"{'variant':8} {'params':>7} {'ppl pruned':>10} {'ppl':>7} {'agree':>6} "
        f"{'prefill ort':>11} {'decode ort':>10} {'prefill pt':>10} {'decode pt':>9} {'KV':>5}"
    )
    print(head)
    base = rows[0]["original_ppl"]
    ones = " ".join(f"{1:>{w}}" for w in (11, 10, 10, 9, 5))
    print(f"{'original':8} {1:>7.3f} {'-':>10} {base:>7.1f} {1:>6.3f} {ones}")
    for r in rows:
        print(
            f"{r['variant']:8} {r['params_ratio']:>7.3f} {r['ppl_after_prune']:>10.1f} "
            f"{r['heldout_ppl']:>7.1f} {r['next_token_agreement']:>6.3f} "
            f"{r['prefill_ratio']['onnxruntime']:>11.3f} {r['decode_ratio']['onnxruntime']:>10.3f} "
            f"{r['prefill_ratio']['torch']:>10.3f} {r['decode_ratio']['torch']:>9.3f} "
            f"{r['kv_ratio']:>5.2f}"
        )
    print(
        "prefill: latency ratio at 1x128 tokens (lower is faster); decode: tokens/s ratio, "
        "batch 1, KV cache, 32 new tokens after 32 (higher is faster); ratios to the original"
    )
    summary = {"steps": args.steps, "variants": rows, "generation": speed}
    print("RESULT " + json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
