"""Padding-aware distillation on a tiny BERT: cutting all-padding columns leaves the
embeddings unchanged, the teacher's states at padding positions do not enter the loss, and
length-grouped batches cover every example once per epoch with similar lengths together."""

from __future__ import annotations

import pytest
import torch

from compressor.data.padding import (
    LengthGroupedBatches,
    example_lengths,
    real_rows,
    trim_padding,
    trim_tensor,
)
from tests.unit.hf_minilm.test_embeddings_stage import _plan
from tests.unit.sharing.helpers import make_ctx

SENTENCES = [
    "the value",
    "a function returns the name of a class and a new object",
    "the list is a new object",
    "a class",
]


def _batch(ctx):
    return ctx.data.tokenizer(SENTENCES)


def test_cutting_padding_columns_keeps_every_embedding(tiny_bert, tmp_path):
    ctx, model = make_ctx(_plan(tmp_path, tiny_bert, "  - distill: {epochs: 1}\n"))
    inputs = _batch(ctx)
    # Pad every row by 5 more columns, as a dataset padded to a longer sentence would be.
    padded = {k: torch.nn.functional.pad(v, (0, 5)) for k, v in inputs.items()}
    trimmed, full = trim_padding(padded)
    longest = int(inputs["attention_mask"].sum(1).max())
    assert full == padded["input_ids"].shape[1]
    assert all(v.shape[1] == longest for v in trimmed.values())
    with torch.no_grad():
        assert torch.allclose(model(**trimmed), model(**padded), atol=1e-5)


def test_nothing_is_cut_when_the_last_column_holds_a_real_token():
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])  # left padding: the end is real
    inputs = {"input_ids": torch.arange(8).reshape(2, 4), "attention_mask": mask}
    trimmed, full = trim_padding(inputs)
    assert full is None and trimmed["input_ids"].shape == (2, 4)
    pixels = {"pixels": torch.ones(2, 3, 4, 4)}
    assert trim_padding(pixels) == (pixels, None)  # no attention mask: not a token batch


def test_cached_token_tensors_are_cut_to_the_batch_and_pooled_ones_are_not():
    tokens, pooled = torch.ones(2, 7, 3), torch.ones(2, 7)
    assert trim_tensor(tokens, 7, 4).shape == (2, 4, 3)
    assert trim_tensor(pooled, 7, 4).shape == (2, 7)  # (batch, features) is not a token map


def test_real_rows_keep_only_real_tokens():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    rows = torch.arange(6.0).reshape(6, 1)
    s, t = real_rows(rows, rows * 10, mask)
    assert s.flatten().tolist() == [0.0, 1.0, 3.0]
    assert t.flatten().tolist() == [0.0, 10.0, 30.0]


def test_teacher_states_at_padding_do_not_change_the_distillation_loss(tiny_bert, tmp_path):
    from compressor.stages.distill.config import DistillConfig
    from compressor.stages.distill.losses import DistillObjective
    from compressor.stages.distill.teacher_cache import IndexedBatch, TeacherCache

    plan = _plan(tmp_path, tiny_bert, "  - distill: {epochs: 1}\n")
    ctx, model = make_ctx(plan)
    cfg = DistillConfig.model_validate(
        {"kd_loss": "cosine", "hidden": {"layers": ["re:model.encoder.layer.\\d+"], "loss": "mse"}}
    )
    teacher = ctx.teacher()
    student = ctx.frozen_copy(model)
    with torch.no_grad():  # a student that differs from its teacher
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    objective = DistillObjective(cfg, student, teacher, ctx, has_labels=False)
    inputs = _batch(ctx)
    batch = IndexedBatch(inputs, None, torch.arange(len(SENTENCES)))
    objective.cache = TeacherCache.build(
        teacher, objective.teacher_taps, _Dataset(inputs), 4, ctx.device
    )
    loss, logs = objective(student, batch)
    assert logs["hidden"] > 0
    # Overwrite the cached teacher states at padding positions with garbage: the loss must
    # not move (they are no part of any sentence's embedding).
    pad = ~inputs["attention_mask"].bool()
    for value in objective.cache.tensors.values():
        if value.dim() == 3:
            value[pad] = 1e3
    again, logs_again = objective(student, batch)
    objective.close()
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)
    assert logs_again["hidden"] == pytest.approx(logs["hidden"], rel=1e-6)


class _Dataset(torch.utils.data.Dataset):
    def __init__(self, inputs):
        self.inputs = inputs

    def __len__(self):
        return len(next(iter(self.inputs.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.inputs.items()}, None


def test_length_grouped_batches_cover_every_example_once_with_similar_lengths():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 65, (1000,), generator=generator)
    batches = LengthGroupedBatches(lengths, 32, seed=0, group=8)
    first, second = list(batches), list(batches)
    assert len(first) == len(batches) == 32  # ceil(1000 / 32)
    for epoch in (first, second):
        assert sorted(i for b in epoch for i in b) == list(range(1000))
    assert first != second  # a new order each epoch
    assert [b for b in LengthGroupedBatches(lengths, 32, seed=0, group=8)] == first  # seeded

    def mean_spread(order):
        return sum(int(lengths[b].max() - lengths[b].min()) for b in order) / len(order)

    random_order = torch.randperm(1000, generator=generator).split(32)
    assert mean_spread(first) < 0.25 * mean_spread([b.tolist() for b in random_order])


def test_length_grouped_batches_give_each_rank_its_own_equal_share():
    lengths = torch.arange(100) % 17
    ranks = [list(LengthGroupedBatches(lengths, 8, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6  # 13 batches, one left out for equal steps
    seen = [i for batches in ranks for b in batches for i in b]
    assert len(seen) == len(set(seen))


def test_example_lengths_read_the_attention_mask(tiny_bert, tmp_path):
    ctx, _ = make_ctx(_plan(tmp_path, tiny_bert, "  - distill: {epochs: 1}\n"))
    train = ctx.data.dataset("train")
    lengths = example_lengths(train)
    assert lengths.tolist() == train.inputs["attention_mask"].sum(1).tolist()
    assert example_lengths(object()) is None


def test_teacher_cache_built_by_length_matches_the_plain_build(tiny_bert, tmp_path):
    from compressor.stages.distill.teacher_cache import FeatureTaps, TeacherCache

    ctx, model = make_ctx(_plan(tmp_path, tiny_bert, "  - distill: {epochs: 1}\n"))
    inputs = _batch(ctx)
    inputs = {k: torch.nn.functional.pad(v, (0, 3)) for k, v in inputs.items()}  # + padding
    taps = FeatureTaps(model, ["model.encoder.layer.0", "model.encoder.layer.1"])
    by_length = TeacherCache.build(model, taps, _Dataset(inputs), 2, ctx.device)
    plain = TeacherCache.build(model, taps, _PlainDataset(inputs), 2, ctx.device)
    taps.close()
    real = inputs["attention_mask"].bool()
    assert by_length.tensors.keys() == plain.tensors.keys()
    for key, value in plain.tensors.items():
        cached = by_length.tensors[key]
        assert cached.shape == value.shape
        if value.dim() == 3:  # token states: equal at real tokens, zero at padding
            assert torch.allclose(cached[real], value[real], atol=1e-5)
            assert not cached[~real].any()
        else:  # the pooled sentence embedding
            assert torch.allclose(cached, value, atol=1e-5)


class _PlainDataset(torch.utils.data.Dataset):
    """The same examples without ``inputs``: the cache cannot read their lengths."""

    def __init__(self, inputs):
        self._examples = _Dataset(inputs)

    def __len__(self):
        return len(self._examples)

    def __getitem__(self, i):
        return self._examples[i]
