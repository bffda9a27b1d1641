"""The key/value cache of a decoder LLM as flat tensors: its layout (layers, KV heads, head
size) checked against the config, the Optimum/onnxruntime-genai input and output names,
and :class:`DecoderWithPast`, the wrapper that turns flat past tensors into transformers'
``DynamicCache`` and back so one ONNX graph serves prefill and decode."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from compressor.errors import ExportError, first_line


@dataclass(frozen=True)
class KVLayout:
    """Shape of one layer's cached key (and value): (batch, num_kv_heads, len, head_dim)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int = 4

    def bytes_per_token(self, batch: int = 1) -> int:
        """KV-cache bytes one more token costs: 2 (key, value) x layers x kv heads x head dim
        x dtype bytes, per sequence."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes * batch


def kv_layout(model_or_config: Any, dtype: torch.dtype | None = None) -> KVLayout:
    """The KV-cache layout a causal LM's config states (GQA and explicit ``head_dim`` honoured;
    GPT-2 / OPT / GPT-NeoX spellings via transformers' attribute maps).

    Raises:
        ExportError: the config states no layer or head count.
    """
    config = getattr(model_or_config, "config", model_or_config)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    arch = arch_name(model_or_config)
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not layers or not heads:
        raise ExportError(
            f"{arch}: the config states no num_hidden_layers / num_attention_heads, so the "
            "KV-cache layout is unknown",
            hint="export a Hugging Face *ForCausalLM whose config has both",
        )
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if dtype is None:
        params = getattr(model_or_config, "parameters", None)
        first = next(params(), None) if callable(params) else None
        dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    itemsize = torch.empty((), dtype=dtype).element_size()
    return KVLayout(int(layers), int(kv_heads), int(head_dim), itemsize)


def checked_layout(model: nn.Module) -> KVLayout:
    """The config's KV layout, checked against the cache a 2-token forward really builds.

    Raises:
        ExportError: they differ (a stale ``num_key_value_heads`` / ``head_dim`` /
            ``num_hidden_layers`` after pruning), naming both.
    """
    from transformers import DynamicCache  # deferred: extra 'hf'

    layout = kv_layout(model)
    ids = torch.zeros(1, 2, dtype=torch.long)
    with torch.no_grad():
        try:
            out = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                use_cache=True,
                return_dict=True,
                **{cache_kwarg(model): DynamicCache()},
            )
        except Exception as e:
            raise ExportError(
                f"{arch_name(model)} fails on a 2-token input: {first_line(str(e))}",
                hint="check that the config matches the weights (head counts, head_dim)",
            ) from e
    flat = flatten_cache(returned_cache(out))
    got = (len(flat) // 2, *(flat[0].shape[1::2] if flat else (0, 0)))
    want = (layout.num_layers, layout.num_kv_heads, layout.head_dim)
    if got != want:
        raise ExportError(
            f"{arch_name(model)}: the config states {want[0]} layers x {want[1]} key/value "
            f"heads x head_dim {want[2]}, but the model's cache holds {got[0]} x {got[1]} x "
            f"{got[2]}: the config is stale",
            hint="set num_hidden_layers / num_key_value_heads / head_dim to what the weights "
            "have (after pruning, every changed count must be written back)",
        )
    return layout


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the exported graph, in graph order."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def arch_name(model: Any) -> str:
    config = getattr(model, "config", model)
    archs = getattr(config, "architectures", None)
    return archs[0] if archs else type(model).__name__


def cache_kwarg(model: nn.Module) -> str:
    # transformers 5.24 renamed the forward argument `past_key_values` to `cache` (the old
    # name still works, with a warning); use whichever this version's forward declares.
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def make_cache(flat: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> Any:
    """A ``DynamicCache`` holding ``flat`` = [key0, value0, key1, value1, ...]."""
    from transformers import DynamicCache  # deferred: extra 'hf'

    cache = DynamicCache()
    for i in range(len(flat) // 2):
        cache.update(flat[2 * i], flat[2 * i + 1], i)
    return cache


def flatten_cache(cache: Any) -> list[torch.Tensor]:
    """[key0, value0, key1, value1, ...] of a transformers ``Cache``."""
    flat: list[torch.Tensor] = []
    for layer in cache.layers:
        flat += [layer.keys, layer.values]
    return flat


def empty_past(layout: KVLayout, batch: int, dtype: torch.dtype = torch.float32):
    """Zero-length past tensors: feeding them makes a call a prefill."""
    shape = (batch, layout.num_kv_heads, 0, layout.head_dim)
    return [torch.zeros(shape, dtype=dtype) for _ in range(2 * layout.num_layers)]


def position_ids_for(attention_mask: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Position ids of the last ``seq_len`` tokens as ``generate()`` makes them: running count
    of real tokens (left padding gets position 1, as transformers does)."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 1)
    return pos[:, -seq_len:]


class DecoderWithPast(nn.Module):
    """A causal LM as a function of flat tensors: (ids, mask, positions, *past) -> (logits,
    *present). What gets exported, and the torch reference it is verified against."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.cache_kwarg = cache_kwarg(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            return_dict=True,
            **{self.cache_kwarg: make_cache(past)},
        )
        return (out.logits, *flatten_cache(returned_cache(out)))


def vocab_size_of(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab:
        return int(vocab)
    return int(model.get_output_embeddings().weight.shape[0])
