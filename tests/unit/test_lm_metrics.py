"""Perplexity and next-token agreement of causal LMs, on tiny random transformers models."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from compressor.errors import DataError
from compressor.measure.lm_metrics import next_token_agreement, perplexity
from compressor.measure.metrics import compute_metric, get_metric
from tests.unit.export.tiny_lms import tiny_lm


def _blocks(n: int = 3, batch: int = 2, length: int = 12, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (batch, length), generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def llama():
    return tiny_lm("llama")


def test_perplexity_is_exp_of_the_token_weighted_mean_loss(llama) -> None:
    blocks = _blocks()
    with torch.no_grad():
        # transformers' own shifted loss, averaged over equally sized blocks.
        losses = [float(llama(input_ids=b, labels=b).loss) for b in blocks]
    assert perplexity(llama, blocks) == pytest.approx(math.exp(sum(losses) / 3), rel=1e-5)


def test_perplexity_skips_padding(llama) -> None:
    ids = _blocks(1, batch=1, length=10)[0]
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], dim=1).long()
    alone = perplexity(llama, [ids])
    assert perplexity(llama, [{"input_ids": padded, "attention_mask": mask}]) == pytest.approx(
        alone, rel=1e-5
    )
    # Without the mask the padding is scored too, and the figure changes.
    assert perplexity(llama, [padded]) != pytest.approx(alone, rel=1e-3)


def test_a_copy_agrees_fully_and_another_model_partly(llama) -> None:
    blocks = _blocks()
    assert next_token_agreement(copy.deepcopy(llama), llama, blocks) == 1.0
    other = tiny_lm("llama", seed=1)
    with torch.no_grad():
        hits = sum(
            int(
                (other(input_ids=b).logits.argmax(-1) == llama(input_ids=b).logits.argmax(-1)).sum()
            )
            for b in blocks
        )
    got = next_token_agreement(other, llama, blocks)
    assert got == pytest.approx(hits / (3 * 2 * 12))
    assert 0.0 <= got < 0.5  # independent random models rarely agree on 128 tokens


def test_metrics_keep_the_models_training_mode(llama) -> None:
    student = copy.deepcopy(llama).train()
    next_token_agreement(student, llama, _blocks(1))
    perplexity(student, _blocks(1))
    assert student.training and not llama.training


def test_registered_metrics_match_the_streaming_ones(llama) -> None:
    blocks = _blocks()
    other = tiny_lm("llama", seed=1)
    with torch.no_grad():
        student_logits = [other(input_ids=b).logits for b in blocks]
        teacher_logits = [llama(input_ids=b).logits for b in blocks]
    ppl = get_metric("perplexity")
    assert not ppl.higher_is_better and ppl.needs_labels
    assert compute_metric(ppl, student_logits, blocks) == pytest.approx(
        perplexity(other, blocks), rel=1e-5
    )
    agree = get_metric("next_token_agreement")
    assert agree.higher_is_better and agree.needs_teacher
    assert compute_metric(agree, student_logits, [None] * 3, teacher_logits) == pytest.approx(
        next_token_agreement(other, llama, blocks)
    )


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (torch.rand(2, 8), "integer token ids"),
        (torch.zeros(2, 1, dtype=torch.long), "at least 2"),
        ({"ids": torch.zeros(1, 4, dtype=torch.long)}, "no 'input_ids'"),
    ],
)
def test_malformed_blocks_are_refused(llama, block, message: str) -> None:
    with pytest.raises(DataError, match=message):
        perplexity(llama, [block])


def test_agreement_refuses_different_vocabularies(llama) -> None:
    bigger = tiny_lm("llama", vocab_size=160)
    with pytest.raises(DataError, match="vocabulary 160 != teacher 128"):
        next_token_agreement(bigger, llama, _blocks(1))
