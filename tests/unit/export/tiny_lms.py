"""Tiny random decoder LMs of real transformers architectures, built offline.

Hidden 64, 2 layers, 4 query / 2 key-value heads (GQA where the architecture has it; GPT-2,
OPT and GPT-NeoX have one key/value head per query head), vocabulary 128. Each keeps what
makes its architecture special: Qwen2 tied embeddings and qkv bias, Qwen3 q/k norms and an
explicit head_dim, Phi-3 fused qkv / gate_up, Gemma 2 soft-capping, extra norms and a small
sliding window, Mistral a small sliding window, GPT-NeoX parallel residual and partial rotary.
"""

from __future__ import annotations

from typing import Any

import torch

HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB = 64, 2, 4, 2, 128
# bos/eos/pad inside the tiny vocabulary (several configs default to ids > 128).
_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _llama_like(cls_name: str, **extra: Any) -> Any:
    import transformers

    return getattr(transformers, cls_name)(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        **_IDS,
        **extra,
    )


def tiny_config(arch: str, **overrides: Any) -> Any:
    """The tiny config of ``arch`` (a key of :data:`ARCHS`)."""
    import transformers

    if arch == "llama":
        cfg = _llama_like("LlamaConfig")
    elif arch == "mistral":
        cfg = _llama_like("MistralConfig", sliding_window=4)
    elif arch == "qwen2":
        cfg = _llama_like("Qwen2Config", tie_word_embeddings=True)
    elif arch == "qwen3":
        cfg = _llama_like("Qwen3Config", head_dim=24)
    elif arch == "phi3":
        cfg = _llama_like("Phi3Config")
    elif arch == "gemma2":
        cfg = _llama_like("Gemma2Config", head_dim=24, sliding_window=4)
    elif arch == "olmo2":
        cfg = _llama_like("Olmo2Config")
    elif arch == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            vocab_size=VOCAB,
            max_position_embeddings=256,
            **_IDS,
        )
    elif arch == "opt":
        cfg = transformers.OPTConfig(
            hidden_size=HIDDEN,
            ffn_dim=128,
            word_embed_proj_dim=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            vocab_size=VOCAB,
            max_position_embeddings=256,
            **_IDS,
        )
    elif arch == "gpt2":
        cfg = transformers.GPT2Config(
            n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, vocab_size=VOCAB, n_positions=256, **_IDS
        )
    else:
        raise KeyError(arch)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


ARCHS = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma2",
    "olmo2",
    "gpt_neox",
    "opt",
    "gpt2",
)


def tiny_lm(arch: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A randomly initialised tiny ``*ForCausalLM`` of ``arch``, in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides))
    # Random init gives near-uniform logits, whose greedy argmax flips on rounding noise;
    # larger weights make the next-token choice decisive, as in a trained model.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    return model.eval()
