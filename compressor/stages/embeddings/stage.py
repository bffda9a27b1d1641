"""The ``embeddings`` stage: shrink the token embedding table.

* ``vocab``: vocabulary pruning (``vocab`` in this folder) - keep the tokens a corpus uses
  plus special and single-character tokens, and rewrite the tokenizer to the new ids;
* ``factorize``: low-rank factorisation (``factorize`` in this folder) - ``E ≈ A·B`` learned
  by reconstruction, rank from a target.

Both may run in one stage (vocabulary first, so the factors cover only kept rows); the stage
reports each part's size and, when the plan has evaluation data, its fidelity separately.

After vocabulary pruning the model takes NEW token ids: the run re-tokenises its text data
with the rewritten tokenizer, and no later stage may run the plan's teacher (it only knows the
original ids), so this stage goes after distillation."""

from __future__ import annotations

import json
from typing import Any

import torch

from compressor.data.sources import load_source, parse_source
from compressor.errors import StageError
from compressor.formats.hf.model import HFModel, input_embedding
from compressor.formats.hf.tokenizer import tokenizer_text
from compressor.rebuildable import FactorizedEmbedding
from compressor.stages.embeddings.config import (
    SPLITS,
    EmbeddingsConfig,
    FactorizeConfig,
    VocabConfig,
    order_problems,
    plan_problems,
)
from compressor.stages.embeddings.english_words import keep_english_words
from compressor.stages.embeddings.factorize import (
    bert_post,
    choose_rank,
    factorize_embedding,
    row_weights,
)
from compressor.stages.embeddings.vocab import (
    choose_tokens,
    dropped_token_share,
    prune_vocabulary,
    token_counts,
)
from compressor.stages.registry import (
    register_stage,
)


def _corpus(ctx, names: list[str]) -> list[Any]:

    found = []
    for name in names:
        if name in SPLITS:
            if not ctx.data.has(name):
                raise StageError(f"embeddings corpus names data.{name}, which the plan lacks")
            found.append(ctx.data.dataset(name))
        else:
            ref = parse_source(name, ctx.base_dir)
            found.append(
                load_source(ref, ctx.data.layout, safe=ctx.plan.safe, tokenizer=ctx.data.tokenizer)
            )
    return found


def _tokenizer_dict(model) -> dict[str, Any]:

    text = tokenizer_text(model)
    if text is None:
        raise StageError(
            "vocabulary pruning needs the model's tokenizer.json, and none was found",
            hint="use an hf model folder with a tokenizer.json, or set model.tokenizer",
        )
    return json.loads(text)


def _table_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _eval(ctx, model) -> float | None:
    value = ctx.evaluate(model) if ctx.data.has("eval") else None
    return round(value, 5) if value is not None else None


def _set_table(model, new) -> None:
    inner = model.model
    setter = getattr(inner, "set_input_embeddings", None)
    if setter is None:
        raise StageError("the model cannot swap its token embedding table")
    setter(new)


def _prune_vocab(model, cfg: VocabConfig, ctx) -> dict[str, Any]:

    tokenizer = _tokenizer_dict(model)
    table = input_embedding(model)
    bytes_before = _table_bytes(table)
    counts = token_counts(_corpus(ctx, cfg.corpus), table.num_embeddings)
    choice = choose_tokens(
        counts,
        tokenizer,
        min_count=cfg.min_count,
        max_tokens=cfg.max_tokens,
        keep_chars=cfg.keep_chars,
        keep_first=cfg.keep_first,
    )
    if cfg.english_words:
        choice = keep_english_words(choice, tokenizer, cfg.english_words)
    eval_share = (
        dropped_token_share(ctx.data.dataset("eval"), choice.kept) if ctx.data.has("eval") else {}
    )
    prune_vocabulary(model, tokenizer, choice.kept)
    ctx.adopt_tokenizer(model)
    report = {
        "tokens": {"before": choice.size_before, "after": choice.size_after, **choice.counts},
        "table_bytes": {"before": bytes_before, "after": _table_bytes(input_embedding(model))},
        "eval_tokens_not_kept": eval_share,
    }
    ctx.log(
        f"  vocabulary {choice.size_before:,} -> {choice.size_after:,} tokens "
        f"({choice.counts['corpus']:,} from the corpus)"
    )
    return report


def factorize_table(model, cfg: FactorizeConfig, counts: torch.Tensor | None, seed: int = 0):
    """Replace ``model``'s token table by its rank-chosen factorisation (``cfg``), rows
    weighted by ``counts`` (token frequencies; None for uniform). Returns ``(result, table)``:
    the factorisation and the table it replaced."""
    table = input_embedding(model)
    if isinstance(table, FactorizedEmbedding):
        raise StageError("the token embedding table is already factorised")
    if not isinstance(table, torch.nn.Embedding):
        raise StageError(f"cannot factorise a {type(table).__name__} token table")
    rows, dim = table.weight.shape
    weights = row_weights(counts, rows)
    singular = torch.linalg.svdvals(weights.sqrt().unsqueeze(1) * table.weight.detach().double())
    rank = choose_rank(
        rows, dim, singular, rank=cfg.rank, keep=cfg.keep, energy=cfg.energy, round_to=cfg.round_to
    )
    post = bert_post(getattr(model.model, "embeddings", None))
    result = factorize_embedding(
        table,
        rank,
        weights=weights,
        post=post,
        refine_steps=cfg.refine_steps,
        lr=cfg.lr,
        seed=seed,
    )
    _set_table(model, result.module)
    return result, table


def _factorize(model, cfg: FactorizeConfig, ctx) -> dict[str, Any]:

    counts = None
    if cfg.weighting == "frequency":
        rows = input_embedding(model).num_embeddings
        counts = token_counts(_corpus(ctx, cfg.corpus), rows)
    result, table = factorize_table(model, cfg, counts, seed=ctx.stage_seed())
    rows, dim = table.weight.shape
    rank = result.rank
    bytes_before = _table_bytes(table)
    ctx.log(
        f"  embedding table {rows:,}x{dim} -> rank {rank} "
        f"({_table_bytes(result.module) / bytes_before:.3f}x the bytes)"
    )
    return {
        **result.report(),
        "table_bytes": {"before": bytes_before, "after": _table_bytes(result.module)},
    }


@register_stage(
    "embeddings",
    EmbeddingsConfig,
    "Shrink the token embedding table: vocabulary pruning and/or low-rank factorisation.",
    plan_check=plan_problems,
)
def apply(model, cfg: EmbeddingsConfig, ctx):

    if not isinstance(model, HFModel):
        raise StageError(
            "the embeddings stage works on Hugging Face text models (model.hf)",
            hint="remove it, or load the model with model.hf",
        )
    problems = order_problems(ctx.plan.stage_list())
    if cfg.vocab is not None and problems:
        raise StageError(problems[0])
    report: dict[str, Any] = {}
    if cfg.vocab is not None:
        report["vocab"] = _prune_vocab(model, cfg.vocab, ctx)
        if cfg.factorize is not None:  # the stage's own metric will include both parts
            report["vocab"]["metric"] = _eval(ctx, model)
    if cfg.factorize is not None:
        report["factorize"] = _factorize(model, cfg.factorize, ctx)
        if cfg.vocab is not None:
            report["factorize"]["metric"] = _eval(ctx, model)
    ctx.stage_report.update(report)
    return model
