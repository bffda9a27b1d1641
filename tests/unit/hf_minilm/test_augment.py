"""Token-replacement augmentation (``distill.augment``) on a tiny BERT: copies replace only
ordinary tokens, by their nearest neighbours in the model's own embedding table, at about
the asked rate, reproducibly; the stage trains on them and refuses what it cannot alter."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.errors import StageError
from compressor.formats.hf.tokenizer import tokenizer_text
from compressor.stages import distill
from compressor.stages.distill.augment import (
    AugmentConfig,
    augment_tokens,
    input_embedding_table,
    nearest_tokens,
    replaceable_ids,
)
from compressor.stages.distill.config import DistillConfig
from tests.unit.hf_minilm.test_embeddings_stage import _plan
from tests.unit.sharing.helpers import make_ctx


@pytest.fixture
def bert(tiny_bert, tmp_path):
    return make_ctx(_plan(tmp_path, tiny_bert, "  - distill: {epochs: 1}\n"))


def _allowed(model, table):
    return replaceable_ids(json.loads(tokenizer_text(model)), table.shape[0])


def test_nearest_tokens_are_the_closest_allowed_ones():
    table = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7], [1.0, 0.01]])
    allowed = torch.tensor([True, True, True, True, False])  # 4 is special: never chosen
    near = nearest_tokens(table, torch.tensor([0, 2]), 2, allowed)
    assert near.tolist() == [[1, 3], [3, 1]]


def test_special_and_bracketed_tokens_are_not_replaceable(bert):
    _, model = bert
    tokenizer = json.loads(tokenizer_text(model))
    vocab = tokenizer["model"]["vocab"]
    allowed = replaceable_ids(tokenizer, len(vocab))
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert not allowed[vocab[special]]
    assert allowed[vocab["value"]] and allowed[vocab["##ing"]]


def test_copies_replace_ordinary_tokens_by_neighbours_at_the_asked_rate(bert):
    ctx, model = bert
    train = ctx.data.dataset("train")
    table = input_embedding_table(model)
    allowed = _allowed(model, table)
    cfg = AugmentConfig(copies=3, replace=0.5, neighbours=3)
    out, report = augment_tokens(train, table, cfg, seed=0, allowed=allowed)
    n = len(train)
    ids, mask = train.inputs["input_ids"], train.inputs["attention_mask"].bool()
    assert len(out) == 4 * n and report["examples"] == {"before": n, "after": 4 * n}
    assert torch.equal(out.inputs["input_ids"][:n], ids)  # the originals come first, unchanged
    eligible = mask & allowed[ids]
    for c in range(1, 4):
        copy = out.inputs["input_ids"][c * n : (c + 1) * n]
        changed = copy != ids
        assert not (changed & ~eligible).any()  # [CLS], [SEP], padding never change
        assert torch.equal(out.inputs["attention_mask"][c * n : (c + 1) * n], mask.long())
        for old, new in zip(ids[changed].tolist(), copy[changed].tolist(), strict=True):
            near = nearest_tokens(table, torch.tensor([old]), 3, allowed)[0].tolist()
            assert new in near
    assert 0.4 < report["share_replaced"] < 0.6
    again, _ = augment_tokens(train, table, cfg, seed=0, allowed=allowed)
    other, _ = augment_tokens(train, table, cfg, seed=1, allowed=allowed)
    assert torch.equal(again.inputs["input_ids"], out.inputs["input_ids"])
    assert not torch.equal(other.inputs["input_ids"], out.inputs["input_ids"])


def test_the_stage_distils_on_the_copies(bert):
    ctx, model = bert
    ctx.stage_report = {}
    cfg = DistillConfig.model_validate(
        {"kd_loss": "cosine", "max_steps": 2, "augment": {"copies": 2}, "batch_size": 4}
    )
    distill.apply(model, cfg, ctx)
    report = ctx.stage_report["augment"]
    assert report["examples"]["after"] == 3 * report["examples"]["before"]
    assert report["tokens_replaced"] > 0


def test_augment_with_a_task_loss_is_refused():
    with pytest.raises(ValueError, match="labels no longer hold"):
        DistillConfig.model_validate({"augment": {}, "task": 1.0})
    for bad in ({"copies": 0}, {"replace": 0}, {"replace": 1.5}, {"neighbours": 0}, {"x": 1}):
        with pytest.raises(ValueError):
            AugmentConfig.model_validate(bad)


def test_augment_needs_token_data(write_plan):
    from tests.conftest import cnn_model_block
    from tests.unit.stages.test_distill import DIGITS_DATA
    from tests.unit.stages.test_distill import make_ctx as cnn_ctx

    ctx, model = cnn_ctx(write_plan(cnn_model_block() + DIGITS_DATA))
    ctx.stage_report = {}
    cfg = DistillConfig.model_validate({"max_steps": 1, "augment": {}, "task": 0})
    with pytest.raises(StageError, match="needs token data"):
        distill.apply(model, cfg, ctx)
