"""The ``embeddings`` stage: shrink the token embedding table.

* ``vocab``: vocabulary pruning (``compressor.vocab``) - keep the tokens a corpus uses plus
  special and single-character tokens, and rewrite the tokenizer to the new ids;
* ``factorize``: low-rank factorisation (``compressor.embeddings``) - ``E ≈ A·B`` learned by
  reconstruction, rank from a target.

Both may run in one stage (vocabulary first, so the factors cover only kept rows); the stage
reports each part's size and, when the plan has evaluation data, its fidelity separately.

After vocabulary pruning the model takes NEW token ids: the run re-tokenises its text data
with the rewritten tokenizer, and no later stage may run the plan's teacher (it only knows the
original ids), so this stage goes after distillation.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from compressor.config_base import StrictModel
from compressor.errors import StageError
from compressor.stages.registry import (
    CALIBRATION_DATA,
    EVAL_DATA,
    EXAMPLE_INPUTS,
    TEACHER,
    TRAIN_DATA,
    StageConfig,
    register_stage,
)

SPLITS = {"train": TRAIN_DATA, "eval": EVAL_DATA, "calibration": CALIBRATION_DATA}


def _check_sources(value: list[str]) -> list[str]:
    from compressor.data import parse_source
    from compressor.errors import CompressError

    for item in value:
        if item not in SPLITS:
            try:
                parse_source(item)
            except CompressError as e:
                raise ValueError(
                    f"{e.message}; or name a split: train, eval, calibration"
                ) from None
    return value


class VocabConfig(StrictModel):
    """Keep the tokens a corpus uses (plus special and character tokens)."""

    corpus: list[str] = Field(
        default_factory=lambda: ["train"],
        min_length=1,
        description="Text whose tokens are kept: plan splits (train, eval, calibration) and/or "
        "data sources (builtin:..., a .txt/.jsonl file relative to the plan).",
    )
    min_count: int = Field(1, ge=1, description="Keep corpus tokens seen at least this often.")
    max_tokens: int | None = Field(
        None, ge=8, description="Keep at most this many tokens (the most frequent)."
    )
    keep_chars: Literal["ascii", "all", "none"] = Field(
        "ascii",
        description="Also keep single-character pieces (x, ##x), so unseen words are spelled "
        "out instead of becoming [UNK].",
    )
    keep_first: int = Field(
        0,
        ge=0,
        description="Also keep the first N ids (BERT vocabularies list common words first).",
    )

    @field_validator("corpus")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        return _check_sources(value)


class FactorizeConfig(StrictModel):
    """Replace the token table by a low-rank product; give exactly one of rank/keep/energy."""

    rank: int | None = Field(None, ge=1, description="The rank of the factors.")
    keep: float | None = Field(
        None, gt=0, lt=1, description="Share of the table's parameters the factors may hold."
    )
    energy: float | None = Field(
        None, gt=0, le=1, description="Share of the (weighted) spectral energy to keep."
    )
    round_to: int = Field(8, ge=1, description="Round a computed rank down to a multiple.")
    weighting: Literal["frequency", "uniform"] = Field(
        "frequency", description="Weight rows by how often the corpus uses each token."
    )
    corpus: list[str] = Field(
        default_factory=lambda: ["train"],
        min_length=1,
        description="Text whose token frequencies weight the rows (as in vocab.corpus).",
    )
    refine_steps: int = Field(
        0,
        ge=0,
        description="Adam steps refining the factors on the embedding output after the "
        "weighted SVD. Off by default: on MiniLM, 300 steps LOWERED held-out sentence "
        "fidelity at rank 64 and 128 (benchmarks/minilm_embeddings.py).",
    )
    lr: float = Field(3e-3, gt=0, description="Learning rate of the refinement.")

    @field_validator("corpus")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        return _check_sources(value)

    @model_validator(mode="after")
    def _one_target(self) -> FactorizeConfig:
        given = [k for k in ("rank", "keep", "energy") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'rank', 'keep' or 'energy'")
        return self


class EmbeddingsConfig(StageConfig):
    vocab: VocabConfig | None = Field(None, description="Vocabulary pruning.")
    factorize: FactorizeConfig | None = Field(None, description="Low-rank factorisation.")

    @model_validator(mode="after")
    def _something(self) -> EmbeddingsConfig:
        if self.vocab is None and self.factorize is None:
            raise ValueError("give 'vocab', 'factorize' or both")
        return self

    def requirements(self) -> set[str]:
        corpora = []
        if self.vocab is not None:
            corpora += self.vocab.corpus
        if self.factorize is not None and self.factorize.weighting == "frequency":
            corpora += self.factorize.corpus
        return {EXAMPLE_INPUTS} | {SPLITS[c] for c in corpora if c in SPLITS}


def order_problems(stages: list[tuple[str, Any]]) -> list[str]:
    """Plan-level check: after vocabulary pruning no stage may need the plan's teacher, which
    only understands the original token ids. One message per offending stage."""
    problems = []
    pruned_at = None
    for index, (name, cfg) in enumerate(stages):
        if pruned_at is not None and TEACHER in cfg.requirements():
            problems.append(
                f"stage {index} ({name}) needs the teacher, but stage {pruned_at} (embeddings."
                "vocab) already changed the token ids; move the vocabulary pruning after it"
            )
        if name == "embeddings" and getattr(cfg, "vocab", None) is not None:
            pruned_at = index if pruned_at is None else pruned_at
    return problems


# ------------------------------------------------------------------ helpers


def _corpus(ctx, names: list[str]) -> list[Any]:
    from compressor.data import load_source, parse_source

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
    from compressor.hf import tokenizer_text

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


# ------------------------------------------------------------------ the stage


def _prune_vocab(model, cfg: VocabConfig, ctx) -> dict[str, Any]:
    from compressor.hf import adopt_model_tokenizer, input_embedding
    from compressor.vocab import choose_tokens, dropped_token_share, prune_vocabulary, token_counts

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
    eval_share = (
        dropped_token_share(ctx.data.dataset("eval"), choice.kept) if ctx.data.has("eval") else {}
    )
    prune_vocabulary(model, tokenizer, choice.kept)
    adopt_model_tokenizer(ctx, model)
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


def _factorize(model, cfg: FactorizeConfig, ctx) -> dict[str, Any]:
    from compressor.embeddings import bert_post, choose_rank, factorize_embedding, row_weights
    from compressor.hf import input_embedding
    from compressor.modules import FactorizedEmbedding
    from compressor.vocab import token_counts

    table = input_embedding(model)
    if isinstance(table, FactorizedEmbedding):
        raise StageError("the token embedding table is already factorised")
    if not isinstance(table, torch.nn.Embedding):
        raise StageError(f"cannot factorise a {type(table).__name__} token table")
    rows, dim = table.weight.shape
    counts = None
    if cfg.weighting == "frequency":
        counts = token_counts(_corpus(ctx, cfg.corpus), rows)
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
        seed=ctx.stage_seed(),
    )
    bytes_before = _table_bytes(table)
    _set_table(model, result.module)
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
)
def apply(model, cfg: EmbeddingsConfig, ctx):
    from compressor.hf import HFModel

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
