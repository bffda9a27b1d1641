"""The prune stage on a decoder LLM: through its known layout, never the general graph search.

A ``*ForCausalLM`` whose architecture ``compressor.graph.decoder`` knows (Llama, Mistral,
Qwen2/3, Phi-3, Gemma 2, OLMo-2, GPT-NeoX, OPT, GPT-2) is pruned by unit kind: ``heads``
(whole key/value groups, or query heads within every group with ``gqa: within``), ``ffn``
(the MLP width, gate and up together), ``layers`` (whole blocks, lowest block influence
first) and ``hidden`` (the residual stream, embeddings and LM head). Importance comes from
activations on calibration text (Minitron) with ``criterion: activation``, else from weight
magnitude. ``scope: per-layer`` (the default) keeps one width for every layer, so the result
is a stock config; ``scope: global`` ranks across layers (per-layer widths).

The generic options (``amount``, ``target``, ``amounts``, ``modules``, ``steps``) describe
channel groups of the graph engine; on a decoder they are refused with a clear message
rather than run through a graph search that can explode on these models.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from compressor.counting import model_facts
from compressor.errors import StageError
from compressor.graph.decoder import find_decoder_layout, prune_decoder
from compressor.stages.prune.config import PruneConfig

# PruneConfig fields that only the graph engine understands.
_GRAPH_ONLY = ("amount", "target", "amounts", "modules")


def is_decoder(model: nn.Module) -> bool:
    """True for a causal LM whose layout the decoder pruner knows."""
    return find_decoder_layout(model) is not None


def prune_decoder_stage(model: nn.Module, cfg: PruneConfig, ctx: Any) -> nn.Module:
    """Run ``cfg`` on a decoder LLM (in place); the stage report gets its facts."""
    given = [name for name in _GRAPH_ONLY if getattr(cfg, name)]
    if given or cfg.steps > 1:
        what = ", ".join(given + (["steps"] if cfg.steps > 1 else []))
        raise StageError(
            f"prune: {what} address the graph engine's channel groups, which decoder LLMs "
            f"({type(getattr(model, 'model', model)).__name__}) are not pruned through",
            hint="use heads, ffn, layers and hidden (fractions removed; layers may be a count)",
        )
    if not any((cfg.heads, cfg.ffn, cfg.layers, cfg.hidden)):
        raise StageError(
            "prune: nothing to prune in a decoder LLM: heads, ffn, layers and hidden are all 0",
            hint="e.g. prune: {ffn: 0.5, heads: 0.25} or {layers: 4}",
        )
    inputs = {k: v.to(ctx.device) for k, v in ctx.example_inputs().items()}
    before = model_facts(model, inputs)
    batches = None
    # Activations rank widths; block influence ranks layers whatever the width criterion:
    # both read calibration text when the plan has any (else random ids, said in the notes).
    if (cfg.criterion == "activation" or cfg.layers) and ctx.data.has("calibration"):
        found = ctx.data.batches("calibration", cfg.calibration_batches, seed=ctx.stage_seed())
        batches = [{k: v.to(ctx.device) for k, v in b.inputs.items()} for b in found]
    result = prune_decoder(
        model,
        heads=cfg.heads or 0.0,
        ffn=cfg.ffn or 0.0,
        layers=cfg.layers or 0,
        hidden=cfg.hidden or 0.0,
        criterion="activation" if cfg.criterion == "activation" else "magnitude",
        calib_batches=batches,
        gqa=cfg.gqa,
        uniform=cfg.scope != "global",
        round_to=cfg.round_to or 1,
    )
    after = model_facts(model, inputs)
    for note in result.report.get("notes", []):
        ctx.log(f"  {note}")
    ctx.log(
        f"  decoder pruned: params {after['params']:,} "
        f"({after['params'] / max(before['params'], 1):.3f}x)"
    )
    ctx.stage_report.update(
        {
            "criterion": cfg.criterion,
            "scope": cfg.scope,
            "decoder": result.report,
            **{
                k: {
                    "before": before[k],
                    "after": after[k],
                    "ratio": round(after[k] / max(before[k], 1), 4),
                }
                for k in after
            },
            "notes": list(result.report.get("notes", [])),
        }
    )
    return model
