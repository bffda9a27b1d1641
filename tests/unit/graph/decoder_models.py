"""Tiny random decoder LLMs of every architecture decoder pruning covers (built offline)."""

from __future__ import annotations

import torch

VOCAB = 128


COMMON = dict(vocab_size=VOCAB, num_hidden_layers=4, pad_token_id=0, bos_token_id=1, eos_token_id=2)
LLAMA_LIKE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    **COMMON,
)

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "olmo2", "gpt_neox", "opt", "gpt2"]


def tiny_config(arch: str):
    import transformers as T

    if arch == "llama":
        return T.LlamaConfig(**LLAMA_LIKE)
    if arch == "mistral":
        return T.MistralConfig(**LLAMA_LIKE, sliding_window=None)
    if arch == "qwen2":
        return T.Qwen2Config(**LLAMA_LIKE, tie_word_embeddings=True)
    if arch == "qwen3":
        return T.Qwen3Config(**LLAMA_LIKE, head_dim=16, tie_word_embeddings=False)
    if arch == "phi3":
        return T.Phi3Config(**LLAMA_LIKE)
    if arch == "gemma2":
        return T.Gemma2Config(**LLAMA_LIKE, head_dim=16, query_pre_attn_scalar=16, sliding_window=8)
    if arch == "olmo2":
        return T.Olmo2Config(**LLAMA_LIKE)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            max_position_embeddings=128,
            rotary_pct=0.5,
            **COMMON,
        )
    if arch == "opt":
        return T.OPTConfig(
            hidden_size=64,
            ffn_dim=128,
            num_attention_heads=4,
            word_embed_proj_dim=64,
            max_position_embeddings=128,
            **COMMON,
        )
    if arch == "gpt2":
        return T.GPT2Config(
            n_embd=64,
            n_layer=4,
            n_head=4,
            n_inner=128,
            n_positions=128,
            vocab_size=VOCAB,
            bos_token_id=1,
            eos_token_id=2,
        )
    raise KeyError(arch)


def tiny_model(arch: str, seed: int = 0):
    import transformers as T

    torch.manual_seed(seed)
    config = tiny_config(arch)
    config._attn_implementation = "eager"
    model = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # norms start at one / zero: perturb so pruning them shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def batches(n: int = 2, seed: int = 1, rows: int = 2, length: int = 16):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (rows, length), generator=g)
        mask = torch.ones_like(ids)
        mask[0, -3:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out
