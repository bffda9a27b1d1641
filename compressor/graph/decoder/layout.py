"""Where the prunable parts of a Hugging Face decoder LLM live, per architecture.

    layout = find_decoder_layout(model)     # DecoderLayout | None
    lm = causal_lm(model)                    # the transformers model inside a wrapper

Decoder blocks have a known structure, so pruning them needs no graph search (Torch-Pruning's
``get_all_groups`` does not finish on a 4-layer Qwen3 with q/k norms). A
:class:`DecoderLayout` names, relative to the ``*ForCausalLM`` module, the layer stack and,
relative to each block, the attention projections, MLP projections and norms, plus the
config fields that state each width. :mod:`compressor.graph.decoder` edits through it.

Projection kinds:

* ``split``: separate q/k/v Linear layers (Llama, Mistral, Qwen2/3, Gemma 2, OLMo-2, OPT);
* ``concat``: one projection whose outputs are ``[q | k | v]`` (Phi-3 ``qkv_proj``, GPT-2's
  Conv1D ``c_attn``);
* ``interleaved``: one projection viewed as ``(heads, 3 * head_dim)``, so each head's rows
  are ``[q_h | k_h | v_h]`` (GPT-NeoX ``query_key_value``).

``head_dim_from_hidden``: the config derives the head size as ``hidden_size /
num_attention_heads`` (GPT-2, GPT-NeoX, OPT), so a stock config can describe a pruned model
only while ``heads * head_dim == hidden_size``; otherwise the per-module attributes and the
structure manifest carry the widths.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch.nn as nn

from compressor.errors import StageError


@dataclass(frozen=True)
class DecoderLayout:
    """The known structure of one decoder architecture (paths are dotted module names)."""

    arch: str
    layers: str  # the ModuleList of decoder blocks, from the causal-LM root
    embed: str
    lm_head: str
    final_norm: str | None
    pos_embed: str | None = None  # learned position embeddings (GPT-2, OPT)
    # Inside each block:
    attn: str = "self_attn"
    qkv_kind: Literal["split", "concat", "interleaved"] = "split"
    q: str = "q_proj"  # split: q_proj; concat / interleaved: the fused projection
    k: str | None = "k_proj"
    v: str | None = "v_proj"
    o: str = "o_proj"
    q_norm: str | None = None
    k_norm: str | None = None
    qk_norm_spans_projection: bool = False  # OLMo-2: the norm covers heads * head_dim
    mlp_in: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj")
    mlp_fused_halves: bool = False  # Phi-3 gate_up_proj: output rows are [gate | up]
    mlp_out: str = "mlp.down_proj"
    mlp: str = "mlp"
    block_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    conv1d: bool = False  # GPT-2: Conv1D weights are (in, out)
    head_dim_from_hidden: bool = False
    # Config fields (names as the config stores them; attribute maps cover aliases).
    heads_key: str = "num_attention_heads"
    kv_key: str | None = "num_key_value_heads"
    head_dim_key: str | None = "head_dim"
    ffn_key: str = "intermediate_size"
    hidden_key: str = "hidden_size"
    layers_key: str = "num_hidden_layers"
    # Config fields read inside forward that a shared config must carry (Phi-3 slices its
    # fused projection with config.num_attention_heads): per-layer head counts are refused.
    heads_read_from_config: bool = False

    @property
    def attn_inputs(self) -> tuple[str, ...]:
        return tuple(p for p in (self.q, self.k, self.v) if p is not None)


_LLAMA = DecoderLayout("llama", "model.layers", "model.embed_tokens", "lm_head", "model.norm")
_QK_NORM = dict(q_norm="q_norm", k_norm="k_norm")

LAYOUTS: dict[str, DecoderLayout] = {
    "llama": _LLAMA,
    "mistral": replace(_LLAMA, arch="mistral"),
    "qwen2": replace(_LLAMA, arch="qwen2"),
    "qwen3": replace(_LLAMA, arch="qwen3", **_QK_NORM),
    "olmo2": replace(
        _LLAMA,
        arch="olmo2",
        **_QK_NORM,
        qk_norm_spans_projection=True,
        # OLMo-2 normalises after attention and after the MLP (post-norm residual).
        block_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
    ),
    "gemma2": replace(
        _LLAMA,
        arch="gemma2",
        block_norms=(
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ),
    ),
    "phi3": replace(
        _LLAMA,
        arch="phi3",
        qkv_kind="concat",
        q="qkv_proj",
        k=None,
        v=None,
        mlp_in=("mlp.gate_up_proj",),
        mlp_fused_halves=True,
        heads_read_from_config=True,
    ),
    "gpt_neox": DecoderLayout(
        "gpt_neox",
        "gpt_neox.layers",
        "gpt_neox.embed_in",
        "lm_head",
        "gpt_neox.final_layer_norm",
        attn="attention",
        qkv_kind="interleaved",
        q="query_key_value",
        k=None,
        v=None,
        o="dense",
        mlp_in=("mlp.dense_h_to_4h",),
        mlp_out="mlp.dense_4h_to_h",
        head_dim_from_hidden=True,
        kv_key=None,
        head_dim_key=None,
    ),
    "opt": DecoderLayout(
        "opt",
        "model.decoder.layers",
        "model.decoder.embed_tokens",
        "lm_head",
        "model.decoder.final_layer_norm",
        pos_embed="model.decoder.embed_positions",
        o="out_proj",
        mlp_in=("fc1",),
        mlp_out="fc2",
        mlp="",
        block_norms=("self_attn_layer_norm", "final_layer_norm"),
        head_dim_from_hidden=True,
        kv_key=None,
        head_dim_key=None,
        ffn_key="ffn_dim",
    ),
    "gpt2": DecoderLayout(
        "gpt2",
        "transformer.h",
        "transformer.wte",
        "lm_head",
        "transformer.ln_f",
        pos_embed="transformer.wpe",
        attn="attn",
        qkv_kind="concat",
        q="c_attn",
        k=None,
        v=None,
        o="c_proj",
        mlp_in=("mlp.c_fc",),
        mlp_out="mlp.c_proj",
        block_norms=("ln_1", "ln_2"),
        conv1d=True,
        head_dim_from_hidden=True,
        kv_key=None,
        head_dim_key=None,
        ffn_key="n_inner",
    ),
}


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model itself: ``model`` or the one an ``HFModel`` wraps."""
    inner = getattr(model, "model", None)
    if hasattr(model, "task") and inner is not None and hasattr(inner, "config"):
        return inner
    return model


def _resolves(root: nn.Module, path: str | None) -> bool:
    if path is None or path == "":
        return True
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


def find_decoder_layout(model: nn.Module) -> DecoderLayout | None:
    """The layout of a supported ``*ForCausalLM`` (or an ``HFModel`` wrapping one), else None.

    Detection reads ``config.model_type`` and then checks that every named module exists,
    so a custom subclass that moved a module is not edited on a wrong assumption.
    """
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    layout = LAYOUTS.get(getattr(config, "model_type", None) or "")
    if layout is None:
        return None
    paths = [layout.layers, layout.embed, layout.lm_head, layout.final_norm, layout.pos_embed]
    if not all(_resolves(lm, p) for p in paths):
        return None
    layers = lm.get_submodule(layout.layers)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    block = layers[0]
    attn = block.get_submodule(layout.attn)
    inside = [layout.o, *layout.attn_inputs, layout.q_norm, layout.k_norm]
    if not all(_resolves(attn, p) for p in inside):
        return None
    if not all(_resolves(block, p) for p in (*layout.mlp_in, layout.mlp_out, *layout.block_norms)):
        return None
    return layout


def require_decoder_layout(model: nn.Module) -> DecoderLayout:
    """:func:`find_decoder_layout`, or a :class:`StageError` naming what is not supported.

    Raises:
        StageError: not one of the supported decoder architectures, or a variant the edits
            do not handle (GPT-2 cross-attention).
    """
    lm = causal_lm(model)
    layout = find_decoder_layout(model)
    config = getattr(lm, "config", None)
    if layout is None:
        kind = getattr(config, "model_type", None)
        raise StageError(
            f"decoder pruning does not know the layout of {type(lm).__name__} "
            f"(model_type {kind!r}); it handles the causal LMs of "
            f"{', '.join(sorted(LAYOUTS))}",
            hint="use a supported architecture, or the general prune stage (heads/ffn) on "
            "models whose structure it can trace",
        )
    if layout.arch == "gpt2" and getattr(config, "add_cross_attention", False):
        raise StageError(
            f"{type(lm).__name__} has cross-attention (add_cross_attention), which decoder "
            "pruning does not edit",
            hint="prune a decoder-only GPT-2",
        )
    return layout


def config_value(config: Any, key: str | None) -> Any:
    return getattr(config, key, None) if key else None
