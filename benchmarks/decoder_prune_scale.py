"""Peak memory and time of decoder pruning on a TinyLlama-1.1B-shaped Llama (random init).

    PYTHONPATH=. python benchmarks/decoder_prune_scale.py [--layers 22 --hidden 2048 ...]

Prunes half the MLP width and a quarter of the layers (magnitude importance; block
influence on one random-token batch), then writes compress's model.safetensors and a Hugging
Face folder (``save_hf_folder``: stock config), and reloads that folder with plain
``AutoModelForCausalLM`` to check it is the pruned shape. Prints time
and peak resident memory per phase (ru_maxrss: the process's high-water mark, so each
figure is the peak up to the end of that phase) against the model's fp32 bytes, and ends
with one ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.compat.torchvision_cpu import install as install_torchvision_shim

# This project's dev environment has the PyPI torchvision (built for CUDA torch) beside CPU
# torch; transformers imports it. The test-only shim lets it import (see FINDINGS.md).
install_torchvision_shim()


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--ffn", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import transformers

    from compressor.formats.architecture import ArchitectureRef
    from compressor.formats.compacted import save_compressed
    from compressor.formats.hf.save import save_hf_folder
    from compressor.formats.manifest import diff, snapshot
    from compressor.graph.decoder import prune_decoder

    rows = []
    base = peak_bytes()
    t = time.perf_counter()
    config = transformers.LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        vocab_size=args.vocab,
    )
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")  # no init pass: random-enough memory for structure
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.model.rotary_emb.__init__(config)  # its inv_freq buffer was left empty
    model.eval()
    fp32 = sum(p.numel() for p in model.parameters()) * 4
    rows.append(("build", time.perf_counter() - t, peak_bytes()))
    t = time.perf_counter()
    before = snapshot(model)
    result = prune_decoder(model, ffn=0.5, layers=0.25, criterion="magnitude")
    rows.append(("prune", time.perf_counter() - t, peak_bytes()))
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_compressed(
            model,
            Path(tmp) / "model.safetensors",
            architecture=ArchitectureRef("factory"),
            manifest=diff(before, model),
            codebooks=False,
        )
        size = saved.size_bytes
        rows.append(("export safetensors", time.perf_counter() - t, peak_bytes()))
        t = time.perf_counter()
        info = save_hf_folder(model, Path(tmp) / "hf")
        hf_bytes = sum(f.stat().st_size for f in (Path(tmp) / "hf").rglob("*") if f.is_file())
        rows.append(("export hf folder", time.perf_counter() - t, peak_bytes()))
        del model  # the reload is a second copy; what a user's next process would hold
        t = time.perf_counter()
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf")
        shape = {
            "layers": reloaded.config.num_hidden_layers,
            "intermediate_size": reloaded.config.intermediate_size,
            "params": sum(p.numel() for p in reloaded.parameters()),
            "plain_transformers": info.get("plain_transformers"),
        }
        del reloaded
        rows.append(("reload hf (plain)", time.perf_counter() - t, peak_bytes()))
    print(f"model: {fp32 / 1e9:.2f} GB fp32, params {result.report['params']}")
    print(f"hf folder: {hf_bytes / 1e9:.2f} GB, reloaded with AutoModelForCausalLM: {shape}")
    print(f"{'phase':<20}{'seconds':>10}{'peak RSS GB':>14}{'x fp32':>9}")
    for name, sec, peak in rows:
        print(f"{name:<20}{sec:>10.1f}{peak / 1e9:>14.2f}{peak / fp32:>9.2f}")
    print(
        "RESULT "
        + json.dumps(
            {
                "fp32_bytes": fp32,
                "baseline_rss": base,
                "file_bytes": size,
                "hf_folder_bytes": hf_bytes,
                "reloaded": shape,
                "params": result.report["params"],
                "phases": {
                    n: {"seconds": round(s, 2), "peak_rss": p, "x_fp32": round(p / fp32, 3)}
                    for n, s, p in rows
                },
            }
        )
    )


if __name__ == "__main__":
    main()
