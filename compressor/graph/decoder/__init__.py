"""Structural pruning of Hugging Face decoder LLMs through known per-architecture layouts.

Decoder blocks have a known layout, so they are edited directly rather than through the
general graph search (which can explode on them): ``layout`` (where each architecture keeps
its attention, MLP, norms, embeddings, LM head and config fields), ``edits`` (heads with
grouped-query attention, MLP width, hidden width, every coupled tensor and attribute),
``importance`` (activations on calibration text, or weight magnitude), ``prune`` (the
order and amounts: layers first by block influence, then widths).
"""

from compressor.graph.decoder.layout import DecoderLayout, find_decoder_layout
from compressor.graph.decoder.prune import DecoderPruning, prune_decoder

__all__ = ["DecoderLayout", "DecoderPruning", "find_decoder_layout", "prune_decoder"]
