"""What head, FFN and depth pruning buy on Hugging Face architectures, measured.

Builds MiniLM-sized random models offline (hidden 384, 6 layers, 12 heads, FFN 1536; BERT,
GPT-2 and ViT at 224 px / 16 px patches), saves each as a Hugging Face folder, loads it
through a plan and prunes it with the prune stage: half the heads and half the FFN width,
half the layers (block influence on the example inputs), and both. Every model is exported to
ONNX (verified against torch) and timed in onnxruntime on the CPU in interleaved, paired
rounds. Prints params, MACs and latency ratios (pruned / original) and the size of the Hugging
Face folder each writes (and whether plain transformers loads it).

    python benchmarks/hf_prune_latency.py [--archs bert gpt2 vit] [--batch 8] [--seq 128]

Ends with one line ``RESULT {json}`` holding every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from compressor.counting import count_macs, count_params
from compressor.data.bundle import DataBundle
from compressor.formats.hf.save import save_hf_folder
from compressor.formats.loading import load_model
from compressor.formats.onnx.export import export_onnx
from compressor.formats.onnx.session import timing_session
from compressor.measure.latency import environment, ort_callable, physical_cores, time_interleaved
from compressor.plan.load import load_plan
from compressor.run.context import RunContext
from compressor.spec.sections import OnnxSpec
from compressor.stages import prune

VARIANTS = {
    "heads+ffn 50%": {"heads": 0.5, "ffn": 0.5},
    "layers 50%": {"layers": 0.5},
    "both": {"heads": 0.5, "ffn": 0.5, "layers": 0.5},
}


def build(arch: str):
    import transformers

    common = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12}
    if arch == "bert":
        return transformers.BertModel(transformers.BertConfig(intermediate_size=1536, **common))
    if arch == "gpt2":
        config = transformers.GPT2Config(n_embd=384, n_layer=6, n_head=12, n_inner=1536)
        return transformers.GPT2Model(config)
    return transformers.ViTModel(transformers.ViTConfig(intermediate_size=1536, **common))


def context(arch: str, folder: Path, batch: int, seq: int) -> tuple[RunContext, torch.nn.Module]:
    if arch == "vit":
        inputs = f"    pixel_values: {{shape: [{batch}, 3, 224, 224]}}\n"
    else:
        inputs = (
            f"    input_ids: {{shape: [{batch}, {seq}], dtype: int64, low: 1, high: 30000}}\n"
            f"    attention_mask: {{shape: [{batch}, {seq}], dtype: int64, low: 1, high: 2}}\n"
        )
    plan_path = folder.parent / f"{arch}.yaml"
    plan_path.write_text(f"model:\n  hf: {folder}\n  task: base\n  inputs:\n{inputs}")
    plan = load_plan(plan_path)
    loaded = load_model(plan.plan.model, plan.base_dir)
    data = DataBundle(plan.plan, plan.base_dir, loaded.input_specs, None)
    ctx = RunContext(plan.plan, plan.base_dir, loaded, torch.device("cpu"), data, quiet=True)
    return ctx, loaded.model


def paired(sessions: dict, example: dict, rounds: int, iterations: int) -> dict[str, dict]:
    """Median latency and median per-round ratio to the original (paired rounds)."""
    fns = {n: ort_callable(s, example) for n, s in sessions.items()}
    names = list(fns)
    time_interleaved(fns, warmup=2, rounds=1, iterations=1)
    per_round = []
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        timed = time_interleaved(
            {n: fns[n] for n in order}, warmup=0, rounds=1, iterations=iterations
        )
        per_round.append({n: timed[n]["p50"] for n in names})
    return {
        n: {
            "ms": round(statistics.median(r[n] for r in per_round), 3),
            "ratio": round(statistics.median(r[n] / r["original"] for r in per_round), 4),
        }
        for n in names
    }


def run_arch(arch: str, args, tmp: Path) -> dict:
    torch.manual_seed(0)
    source = tmp / f"{arch}_source"
    build(arch).eval().save_pretrained(source)
    models, infos = {}, {}
    for name, options in {"original": None, **VARIANTS}.items():
        ctx, model = context(arch, source, args.batch, args.seq)
        if options:
            ctx.stage_report = {}
            prune.apply(model, prune.PruneConfig.model_validate(options), ctx)
        example = ctx.example_inputs()
        hf = save_hf_folder(model, tmp / f"{arch}_{len(models)}_hf", ctx)
        infos[name] = {
            "params": count_params(model),
            "macs": count_macs(model, example),
            "hf_folder_bytes": hf["size_bytes"],
            "plain_transformers": hf["plain_transformers"],
        }
        models[name] = model.eval()
    spec = OnnxSpec(exporter="legacy", opset=17)
    sessions = {}
    for i, (name, model) in enumerate(models.items()):
        onnx = export_onnx(model, example, tmp / f"{arch}{i}.onnx", spec)
        infos[name]["onnx_max_abs_diff"] = onnx["verification"]["max_abs_diff_overall"]
        sessions[name] = timing_session(onnx["path"], threads=args.threads)
    for name, timing in paired(sessions, example, args.rounds, args.iterations).items():
        infos[name].update(timing)
    return infos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["bert", "gpt2", "vit"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"environment": environment(args.threads), "load_average": os.getloadavg()[0]}
    print(f"onnxruntime CPU, {args.threads} thread(s), batch {args.batch}, seq {args.seq}")
    print(f"{'model':<22}{'params':>12}{'MACs':>8}{'ms':>9}{'ratio':>7}{'HF MB':>7}  plain")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            infos = run_arch(arch, args, Path(tmp))
            results[arch] = infos
            base = infos["original"]
            for name, info in infos.items():
                print(
                    f"{arch + ' ' + name:<22}{info['params']:>12,}"
                    f"{info['macs'] / base['macs']:>8.3f}{info['ms']:>9.2f}{info['ratio']:>7.3f}"
                    f"{info['hf_folder_bytes'] / 1e6:>7.1f}  {info['plain_transformers']}"
                )
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
