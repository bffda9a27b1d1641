"""Does a compressed causal LM ship? Checks one ``compress run`` output folder of a language
model: the Hugging Face folder loads with plain ``AutoModelForCausalLM`` (no custom code) and
greedy ``generate()`` gives the same tokens as ``compressor.load`` of ``model.safetensors``;
``decoder_with_past.onnx`` matches torch at prefill and over decode steps, and onnxruntime's
greedy generation gives the same tokens too.

    python benchmarks/lm_parity.py out/tiny_llama --new-tokens 32

Prompts are the first tokens of held-out text (``builtin:python_docs?split=heldout``) when
the folder has a tokenizer, else random ids. Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prompts(hf_dir: Path, count: int, length: int, vocab: int) -> torch.Tensor:
    tokenizer_file = hf_dir / "tokenizer.json"
    if tokenizer_file.is_file():
        from compressor.data.python_docs import heldout_texts
        from compressor.data.tokenization import load_tokenizer

        tok = load_tokenizer(tokenizer_file, length)
        rows = [ids[:length] for ids in tok.stream_ids(heldout_texts()[:count])]
        if len(rows) == count and all(len(r) == length for r in rows):
            return torch.tensor(rows)
    return torch.randint(3, vocab, (count, length), generator=torch.Generator().manual_seed(0))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a compress run's output folder")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--decode-steps", type=int, default=8)
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM

    import compressor
    from compressor.formats.onnx.decoder_verify import ort_generate, verify_decoder_onnx
    from compressor.formats.onnx.session import ort_session

    torch.set_num_threads(2)
    plain = AutoModelForCausalLM.from_pretrained(args.out / "hf").eval()
    ours = compressor.load(args.out / "model.safetensors").eval()
    ids = prompts(args.out / "hf", args.prompts, args.prompt_len, plain.config.vocab_size)
    kw = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    with torch.no_grad():
        want = ours.model.generate(ids, do_sample=False, **kw)
        got = plain.generate(ids, do_sample=False, **kw)
        logits_diff = float((plain(input_ids=ids).logits - ours(input_ids=ids)).abs().max())
    onnx_path = args.out / "decoder_with_past.onnx"
    check = verify_decoder_onnx(plain, onnx_path, decode_steps=args.decode_steps)
    ort_tokens = ort_generate(ort_session(onnx_path), ids, args.new_tokens)
    result = {
        "folder": str(args.out),
        "architecture": type(plain).__name__,
        "layers": plain.config.num_hidden_layers,
        "params": sum(p.numel() for p in plain.parameters()),
        "generate_tokens": args.new_tokens,
        "prompts": args.prompts,
        "hf_generate_equals_compressor_load": bool(torch.equal(got, want)),
        "ort_generate_equals_torch": bool((torch.from_numpy(ort_tokens) == got).all()),
        "max_abs_logits_diff_hf_vs_compressor": logits_diff,
        "onnx_with_past": {
            "passed": check["passed"],
            "max_abs_diff": check["max_abs_diff"],
            "prefill_logits": check["prefill"]["logits"],
            "decode_steps": len(check["decode"]),
            "max_decode_logits": max(d["logits"] for d in check["decode"]),
        },
    }
    rows = [
        ("plain AutoModelForCausalLM loads", "yes"),
        (
            f"greedy generate() x{args.new_tokens}, HF == compressor.load",
            str(result["hf_generate_equals_compressor_load"]),
        ),
        (
            f"onnxruntime greedy x{args.new_tokens} == torch",
            str(result["ort_generate_equals_torch"]),
        ),
        ("max |logits| HF vs compressor.load", f"{logits_diff:.2e}"),
        ("ONNX with past: prefill logits max |diff|", f"{check['prefill']['logits']:.2e}"),
        (
            f"ONNX with past: {len(check['decode'])} decode steps, max |diff|",
            f"{result['onnx_with_past']['max_decode_logits']:.2e}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
