"""The ``embeddings`` stage's plan options (vocabulary pruning, factorisation) and its
plan-level checks, registered with the stage so plan checking never names it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from compressor.data.sources import parse_source
from compressor.errors import CompressError
from compressor.spec.base import (
    CALIBRATION_DATA,
    EVAL_DATA,
    EXAMPLE_INPUTS,
    TEACHER,
    TRAIN_DATA,
    StageConfig,
    StrictModel,
)

SPLITS = {"train": TRAIN_DATA, "eval": EVAL_DATA, "calibration": CALIBRATION_DATA}


def _check_sources(value: list[str]) -> list[str]:

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
    english_words: int = Field(
        0,
        ge=0,
        description="Also keep every piece of the N most frequent English words (wordfreq's "
        "list, split by the model's tokenizer), so everyday words the corpus lacks stay whole.",
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


def plan_problems(plan: Any) -> list[str]:
    """The embeddings stage's plan-level checks (registered with the stage): it needs a Hugging
    Face text model, and no stage after vocabulary pruning may need the teacher."""
    problems = order_problems(plan.stage_list())
    if plan.model.hf is None:
        problems.append("the embeddings stage needs a Hugging Face text model: set model.hf")
    return problems
