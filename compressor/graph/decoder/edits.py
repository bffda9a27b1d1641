"""In-place structural edits of a decoder LLM through its :class:`DecoderLayout`.

Each edit removes one kind of unit with every tensor coupled to it:

* :func:`edit_heads` – query heads and key/value heads of one attention (q/k/v rows, fused
  qkv rows, output-projection columns, q/k norms that span the projection);
* :func:`edit_mlp` – MLP channels of one block (gate and up rows together, or both halves
  of a fused gate_up projection, and the down projection's columns);
* :func:`edit_hidden` – hidden channels everywhere (embeddings, every norm, every
  projection's input or output, the LM head; a tied LM head stays the same Parameter).

Tensors are sliced one at a time (``index_select`` of one weight, then the old one is
dropped), so an edit never holds a second copy of the model. Module attributes that state a
width (``out_features``, ``num_heads``, ``num_key_value_groups``, ``hidden_size``...) follow,
so the structure manifest records them; :func:`sync_decoder_config` then derives the config
from the module shapes (also after ``compressor.load`` rebuilt a model from a manifest).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from compressor.errors import StageError
from compressor.graph.decoder.layout import DecoderLayout, causal_lm, find_decoder_layout
from compressor.graph.layers import is_transposed_linear


def _index(values: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(list(values), dtype=torch.long, device=device)


@torch.no_grad()
def _select(module: nn.Module, name: str, dim: int, keep: Sequence[int]) -> None:
    old = module._parameters.get(name)
    if old is None:
        return
    new = old.detach().index_select(dim, _index(keep, old.device))
    module._parameters[name] = nn.Parameter(new, requires_grad=old.requires_grad)


def slice_out(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep these output features of a Linear / Conv1D (weight rows, bias entries)."""
    if is_transposed_linear(module):
        _select(module, "weight", 1, keep)
        module.nf = len(keep)
    elif isinstance(module, nn.Linear):
        _select(module, "weight", 0, keep)
        module.out_features = len(keep)
    else:
        raise StageError(f"cannot slice the outputs of a {type(module).__name__}")
    _select(module, "bias", 0, keep)


def slice_in(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep these input features of a Linear / Conv1D."""
    if is_transposed_linear(module):
        _select(module, "weight", 0, keep)
        module.nx = len(keep)
    elif isinstance(module, nn.Linear):
        _select(module, "weight", 1, keep)
        module.in_features = len(keep)
    else:
        raise StageError(f"cannot slice the inputs of a {type(module).__name__}")


def slice_norm(module: nn.Module, keep: Sequence[int]) -> None:
    """Keep these channels of a LayerNorm / RMSNorm (weight, bias, ``normalized_shape``)."""
    _select(module, "weight", 0, keep)
    _select(module, "bias", 0, keep)
    if isinstance(getattr(module, "normalized_shape", None), tuple):
        module.normalized_shape = (len(keep),)


def slice_embedding(module: nn.Module, keep: Sequence[int]) -> None:
    _select(module, "weight", 1, keep)
    module.embedding_dim = len(keep)


def _rows(heads: Sequence[int], size: int, offset: int = 0) -> list[int]:
    return [offset + h * size + i for h in heads for i in range(size)]


def head_dim(attn: nn.Module) -> int:
    value = getattr(attn, "head_dim", None) or getattr(attn, "head_size", None)
    if not isinstance(value, int):
        raise StageError(f"{type(attn).__name__} has no head_dim / head_size attribute")
    return value


def _get(module: nn.Module, path: str | None) -> nn.Module | None:
    if path is None:
        return None
    return module.get_submodule(path) if path else module


def attention_counts(block: nn.Module, layout: DecoderLayout) -> tuple[int, int, int]:
    """``(query heads, key/value heads, head_dim)`` of a block, read from tensor shapes."""
    attn = block.get_submodule(layout.attn)
    hd = head_dim(attn)
    o = attn.get_submodule(layout.o)
    heads = (o.weight.shape[0] if is_transposed_linear(o) else o.weight.shape[1]) // hd
    q = attn.get_submodule(layout.q)
    q_out = q.weight.shape[1] if is_transposed_linear(q) else q.weight.shape[0]
    if layout.qkv_kind == "split":
        k = attn.get_submodule(layout.k)
        kv = k.weight.shape[0] // hd
    elif layout.qkv_kind == "concat":
        kv = (q_out - heads * hd) // (2 * hd)
    else:
        kv = heads
    return heads, kv, hd


def mlp_width(block: nn.Module, layout: DecoderLayout) -> int:
    down = block.get_submodule(layout.mlp_out)
    return down.weight.shape[0] if is_transposed_linear(down) else down.weight.shape[1]


def edit_heads(
    block: nn.Module, layout: DecoderLayout, keep_q: Sequence[int], keep_kv: Sequence[int]
) -> None:
    """Keep query heads ``keep_q`` and key/value heads ``keep_kv`` (sorted, original indices).

    With grouped-query attention query head ``i`` reads key/value head ``i // (heads /
    kv_heads)``; the caller keeps whole groups, or the same number of query heads in every
    kept group, so that mapping still holds after renumbering.
    """
    attn = block.get_submodule(layout.attn)
    nh, nkv, hd = attention_counts(block, layout)
    keep_q, keep_kv = sorted(keep_q), sorted(keep_kv)
    if len(keep_q) % len(keep_kv):
        raise StageError("every key/value group must keep the same number of query heads")
    q_rows, kv_rows = _rows(keep_q, hd), _rows(keep_kv, hd)
    q = attn.get_submodule(layout.q)
    if layout.qkv_kind == "split":
        slice_out(q, q_rows)
        slice_out(attn.get_submodule(layout.k), kv_rows)
        slice_out(attn.get_submodule(layout.v), kv_rows)
    elif layout.qkv_kind == "concat":  # [q | k | v]
        rows = q_rows + _rows(keep_kv, hd, nh * hd) + _rows(keep_kv, hd, (nh + nkv) * hd)
        slice_out(q, rows)
    else:  # interleaved: head h owns rows [h*3*hd, (h+1)*3*hd) = [q_h | k_h | v_h]
        if keep_q != keep_kv:
            raise StageError(f"{layout.arch} has one key/value head per query head")
        slice_out(q, _rows(keep_q, 3 * hd))
    slice_in(attn.get_submodule(layout.o), q_rows)
    if layout.qk_norm_spans_projection:
        slice_norm(attn.get_submodule(layout.q_norm), q_rows)
        slice_norm(attn.get_submodule(layout.k_norm), kv_rows)
    heads, kv = len(keep_q), len(keep_kv)
    for attr, value in (
        ("num_heads", heads),
        ("num_attention_heads", heads),
        ("num_key_value_heads", kv),
        ("num_key_value_groups", heads // kv),
        ("split_size", heads * hd),  # GPT-2 splits c_attn's output by this width
    ):
        if isinstance(getattr(attn, attr, None), int):
            setattr(attn, attr, value)


def edit_mlp(block: nn.Module, layout: DecoderLayout, keep: Sequence[int]) -> None:
    """Keep MLP channels ``keep`` of one block."""
    width = mlp_width(block, layout)
    keep = sorted(keep)
    for path in layout.mlp_in:
        proj = block.get_submodule(path)
        slice_out(proj, [*keep, *(width + i for i in keep)] if layout.mlp_fused_halves else keep)
    slice_in(block.get_submodule(layout.mlp_out), keep)
    mlp = _get(block, layout.mlp)
    if mlp is not None and isinstance(getattr(mlp, "intermediate_size", None), int):
        mlp.intermediate_size = len(keep)


def _tied(lm: nn.Module, layout: DecoderLayout) -> bool:
    head = lm.get_submodule(layout.lm_head)
    return head.weight is lm.get_submodule(layout.embed).weight


def edit_hidden(lm: nn.Module, layout: DecoderLayout, keep: Sequence[int]) -> None:
    """Keep hidden channels ``keep`` in every tensor that reads or writes the residual stream.

    q/k norms over one head (Qwen3) are per head_dim and stay; OLMo-2's span the projection
    (heads * head_dim), not the hidden size, so they stay too.
    """
    keep = sorted(keep)
    embed = lm.get_submodule(layout.embed)
    old = embed.weight.shape[1]
    tied = _tied(lm, layout)
    slice_embedding(embed, keep)
    if layout.pos_embed:
        slice_embedding(lm.get_submodule(layout.pos_embed), keep)
    for block in lm.get_submodule(layout.layers):
        attn = block.get_submodule(layout.attn)
        for path in layout.block_norms:
            slice_norm(block.get_submodule(path), keep)
        for path in layout.attn_inputs:
            slice_in(attn.get_submodule(path), keep)
        slice_out(attn.get_submodule(layout.o), keep)
        for path in layout.mlp_in:
            slice_in(block.get_submodule(path), keep)
        slice_out(block.get_submodule(layout.mlp_out), keep)
    if layout.final_norm:
        slice_norm(lm.get_submodule(layout.final_norm), keep)
    head = lm.get_submodule(layout.lm_head)
    if tied:
        head._parameters["weight"] = embed.weight  # one tensor edited, the tie kept
        if isinstance(head, nn.Linear):
            head.in_features = len(keep)
    else:
        slice_in(head, keep)
    for module in lm.modules():
        for attr in ("hidden_size", "embed_dim"):
            if type(getattr(module, attr, None)) is int and getattr(module, attr) == old:
                setattr(module, attr, len(keep))
    config = lm.config
    if getattr(config, "word_embed_proj_dim", None) == old:  # OPT without project_in/out
        config.word_embed_proj_dim = len(keep)
    setattr(config, layout.hidden_key, len(keep))
    if hasattr(embed, "scalar_embed_scale"):
        # Gemma scales embeddings by sqrt(hidden_size); a stock config of the new width
        # says sqrt(new width), so the pruned model must use it too.
        embed.scalar_embed_scale = float(len(keep)) ** 0.5
        _sync_embed_scale(lm, layout)


def _sync_embed_scale(lm: nn.Module, layout: DecoderLayout) -> None:
    # Gemma's scale lives in a non-persistent buffer, which no state dict restores.
    embed = lm.get_submodule(layout.embed)
    scale = getattr(embed, "scalar_embed_scale", None)
    buffer = getattr(embed, "embed_scale", None)
    if isinstance(scale, float) and isinstance(buffer, torch.Tensor):
        with torch.no_grad():
            buffer.fill_(scale)


def _uniform(values: list[int]) -> int | None:
    return values[0] if values and all(v == values[0] for v in values) else None


def sync_decoder_config(model: nn.Module) -> bool:
    """Make the model's config state what its modules hold (hidden size, layer count, and
    head counts / MLP width when every layer has the same), and refresh buffers no state
    dict restores. A no-op (False) for models without a decoder layout.

    Per-layer widths that differ keep the config's values: the modules and the structure
    manifest carry them (nothing in these architectures' forward reads them, except Phi-3's
    head count, which :func:`compressor.graph.decoder.prune_decoder` keeps uniform).
    """
    layout = find_decoder_layout(model)
    if layout is None:
        return False
    lm = causal_lm(model)
    config = lm.config
    layers = lm.get_submodule(layout.layers)
    hidden = lm.get_submodule(layout.embed).weight.shape[1]
    setattr(config, layout.hidden_key, hidden)
    setattr(config, layout.layers_key, len(layers))
    counts = [attention_counts(block, layout) for block in layers]
    heads = _uniform([c[0] for c in counts])
    kv = _uniform([c[1] for c in counts])
    hd = counts[0][2]
    ffn = _uniform([mlp_width(block, layout) for block in layers])
    if ffn is not None:
        setattr(config, layout.ffn_key, ffn)
    if layout.head_dim_from_hidden:
        # The config derives head_dim = hidden / heads: state the heads only when that holds.
        if heads is not None and heads * hd == hidden:
            setattr(config, layout.heads_key, heads)
        if layout.arch == "gpt_neox" and hidden // getattr(config, layout.heads_key) != hd:
            config.head_dim = hd  # GPT-NeoX's rotary embedding reads head_dim when given
    else:
        if heads is not None:
            setattr(config, layout.heads_key, heads)
        if kv is not None and layout.kv_key:
            setattr(config, layout.kv_key, kv)
        config.head_dim = hd  # explicit: hidden / heads no longer gives it
    _sync_embed_scale(lm, layout)
    return True
