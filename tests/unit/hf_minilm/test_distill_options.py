"""Training options of the distill stage on a tiny BERT: ``freeze`` keeps named modules
bit-identical, ``dropout`` sets the rate only while the stage trains, ``group_by_length``
batches similar lengths, and bad values are refused with the field named."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import StageError
from compressor.stages import distill
from compressor.stages.distill.config import DistillConfig
from tests.unit.hf_minilm.test_embeddings_stage import _plan
from tests.unit.sharing.helpers import make_ctx


def _run(ctx, model, **options):
    ctx.stage_report = {}
    cfg = DistillConfig.model_validate({"kd_loss": "cosine", "lr": 1e-3, **options})
    return distill.apply(model, cfg, ctx)


@pytest.fixture
def bert(tiny_bert, tmp_path):
    return make_ctx(_plan(tmp_path, tiny_bert, "  - distill: {epochs: 1}\n"))


def _perturb(model):
    with torch.no_grad():  # a student that is not its teacher, so training moves it
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_frozen_modules_stay_identical_and_trainable_again_after(bert):
    ctx, model = bert
    _perturb(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _run(ctx, model, max_steps=3, freeze=["model.embeddings"])
    after = model.state_dict()
    embeddings = [k for k in before if k.startswith("model.embeddings.")]
    assert embeddings and all(torch.equal(before[k], after[k]) for k in embeddings)
    assert not torch.equal(
        before["model.encoder.layer.0.output.dense.weight"],
        after["model.encoder.layer.0.output.dense.weight"],
    )
    assert all(p.requires_grad for p in model.parameters())


def test_dropout_rate_holds_while_training_and_is_restored(bert):
    ctx, model = bert
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    original = {id(m): m.p for m in dropouts}
    assert dropouts and all(p > 0 for p in original.values())
    seen = []
    handle = dropouts[0].register_forward_pre_hook(
        lambda m, _: seen.append(m.p) if m.training else None
    )
    _run(ctx, model, max_steps=2, dropout=0.0)
    handle.remove()
    assert seen and set(seen) == {0.0}
    assert {id(m): m.p for m in dropouts} == original


def test_group_by_length_trains_on_trimmed_batches(bert):
    ctx, model = bert
    _perturb(model)
    lengths = []

    def record(module, args, kwargs):
        if module.training:
            lengths.append(kwargs["input_ids"].shape[1])

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    _run(ctx, model, epochs=1, group_by_length=True, batch_size=2)
    handle.remove()
    full = ctx.data.dataset("train").inputs["input_ids"].shape[1]
    assert lengths and min(lengths) < full  # batches of the shorter sentences are cut
    assert ctx.stage_report["training"]["steps"] == 4  # 8 sentences in batches of 2


def test_unknown_freeze_name_is_a_clear_error(bert):
    ctx, model = bert
    with pytest.raises(StageError, match=r"freeze: no module named 'model\.embedding'") as info:
        _run(ctx, model, max_steps=1, freeze=["model.embedding"])
    assert "model.embeddings" in info.value.hint
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("bad", [{"dropout": 1.0}, {"dropout": -0.1}, {"freeze": "x"}])
def test_bad_training_options_are_refused(bad):
    with pytest.raises(ValueError):
        DistillConfig.model_validate(bad)


def test_group_by_length_needs_an_attention_mask(write_plan):
    from tests.conftest import cnn_model_block
    from tests.unit.stages.test_distill import DIGITS_DATA, make_ctx

    ctx, model = make_ctx(write_plan(cnn_model_block() + DIGITS_DATA))
    with pytest.raises(StageError, match="group_by_length needs token inputs"):
        _run(ctx, model, max_steps=1, group_by_length=True)
