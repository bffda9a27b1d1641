"""The prune stage on the sample models through a real RunContext: targets met, widths
rounded, per-pattern amounts and ignores, every criterion, iterative steps, the history, and
a compacted file that reloads to exactly the same model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

from compressor.counting import count_macs, count_params
from compressor.errors import StageError
from compressor.formats.architecture import ArchitectureRef
from compressor.formats.compacted import load_compressed, save_compressed
from compressor.formats.manifest import diff, snapshot
from compressor.run.context import RunContext, context_for_plan
from compressor.spec.base import CALIBRATION_DATA, LABELS, TRAIN_DATA
from compressor.stages import prune
from compressor.stages.prune.config import PruneConfig
from tests.conftest import SAMPLES, cnn_model_block

DIGITS_DATA = "data:\n  train: builtin:digits?split=train\n  eval: builtin:digits?split=test\n"
CNN_CONVS = ("stem.0", "block1.conv1", "block1.conv2", "down.0", "block2.conv1", "block2.conv2")


make_ctx = context_for_plan  # the context and model a run starts from


@pytest.fixture
def cnn(write_plan):
    return make_ctx(write_plan(cnn_model_block() + DIGITS_DATA))


def run(ctx: RunContext, model: nn.Module, **options) -> nn.Module:
    ctx.stage_report = {}
    return prune.apply(model, PruneConfig.model_validate(options), ctx)


def widths(model: nn.Module) -> dict[str, int]:
    return {name: model.get_submodule(name).out_channels for name in CNN_CONVS} | {
        "fc1": model.fc1.out_features
    }


# ------------------------------------------------------------------ config


def test_config_checks_and_requirements():
    with pytest.raises(ValidationError, match="not both"):
        PruneConfig(amount=0.5, target={"macs": 0.5})
    with pytest.raises(ValidationError, match="say how much"):
        PruneConfig()
    with pytest.raises(ValidationError, match="regular expression"):
        PruneConfig(amount=0.5, ignore=["re:(unclosed"])
    with pytest.raises(ValidationError, match=r"must be in \[0, 1\)"):
        PruneConfig(amounts={"fc1": 1.5})
    with pytest.raises(ValidationError, match="exactly one"):
        PruneConfig(target={"macs": 0.5, "params": 0.5})
    assert {TRAIN_DATA, LABELS} <= PruneConfig(amount=0.1, criterion="taylor").requirements()
    assert CALIBRATION_DATA in PruneConfig(amount=0.1, criterion="activation").requirements()
    assert TRAIN_DATA not in PruneConfig(amount=0.1, steps=3).requirements()  # optional


# ------------------------------------------------------------------ the digits CNN


def test_mac_target_is_met_with_rounded_widths_and_reloads_exactly(cnn, tmp_path):
    ctx, model = cnn
    x = ctx.example_inputs()
    before = snapshot(model)
    macs0 = count_macs(model, x)
    with torch.no_grad():
        shape0 = model(**x).shape
    run(ctx, model, target={"macs": 0.3}, criterion="l2", scope="global", round_to=8)
    report = ctx.stage_report
    assert count_macs(model, x) <= 0.3 * macs0
    assert report["macs"]["ratio"] <= 0.3 and report["macs"]["ratio"] > 0.25  # close to it
    assert all(w % 8 == 0 for w in widths(model).values()), widths(model)
    assert model.fc2.out_features == 10 and model(**x).shape == shape0
    assert report["units"]["block1.conv1"]["before"] == 64
    assert report["steps"][0]["probes"] >= 3
    # Every edit is in the history, which goes into the artifacts.
    assert {r["module"] for r in ctx.history} >= {"stem.0", "stem.1", "fc1", "fc2"}
    assert all(r["stage"] == "prune" and len(r["kept"]) <= r["size_before"] for r in ctx.history)
    path = tmp_path / "model.safetensors"
    save_compressed(
        model,
        path,
        manifest=diff(before, model),
        history=ctx.history,
        architecture=ArchitectureRef("factory", "sample_models.digits_cnn.model:build"),
    )
    loaded = load_compressed(path)
    assert loaded.history == ctx.history
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(**x), model(**x))
    assert widths(loaded.model) == widths(model)


def test_per_layer_amount_halves_every_group_but_the_output(cnn):
    ctx, model = cnn
    run(ctx, model, amount=0.5)
    assert widths(model) == {
        "stem.0": 32,
        "block1.conv1": 32,
        "block1.conv2": 32,
        "down.0": 64,
        "block2.conv1": 64,
        "block2.conv2": 64,
        "fc1": 64,
    }
    assert model.fc2.out_features == 10
    assert ctx.stage_report["units"]["fc1"] == {"before": 128, "after": 64}


def test_params_target_and_unreachable_targets(cnn):
    ctx, model = cnn
    p0 = count_params(model)
    run(ctx, model, target={"params": 0.5}, scope="per-layer")
    assert 0.45 * p0 < count_params(model) <= 0.5 * p0
    with pytest.raises(StageError, match="cannot be met") as err:
        run(ctx, model, target={"params": 0.01}, max_amount=0.5)
    assert "max_amount" in err.value.hint


def test_patterns_pick_amounts_and_ignore_protects(cnn, write_plan):
    ctx, model = cnn
    block1 = copy.deepcopy(model.block1.state_dict())
    run(ctx, model, amount=0.25, ignore=["block1"], amounts={"re:block2\\..*": 0.75})
    w = widths(model)
    assert (w["stem.0"], w["block1.conv1"]) == (64, 64)  # both groups touch block1
    # The 128-channel residual group holds block2's convolutions too: the pattern matches it.
    assert w["block2.conv1"] == 32 and w["down.0"] == 32 and w["fc1"] == 96
    assert all(torch.equal(v, block1[k]) for k, v in model.block1.state_dict().items())
    ctx, model = make_ctx(write_plan(cnn_model_block() + DIGITS_DATA))
    run(ctx, model, amount=0.5, modules=["fc1"])  # only the groups of fc1's modules
    assert widths(model) == {
        **{n: 64 for n in CNN_CONVS[:3]},
        **{n: 128 for n in CNN_CONVS[3:]},
        "fc1": 64,
    }


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "activation", "bn-scale", "random"])
def test_every_criterion_runs_on_real_data(cnn, criterion):
    ctx, model = cnn
    run(ctx, model, amount=0.5, criterion=criterion, calibration_batches=2, modules=["block1"])
    assert model.block1.conv1.out_channels == 32
    kept = [r["kept"] for r in ctx.history if r["module"] == "block1.conv1" and r["dim"] == "out"]
    assert len(kept) == 1 and len(kept[0]) == 32


def test_criteria_choose_different_units(cnn, write_plan):
    chosen = {}
    for criterion in ("l2", "bn-scale", "random", "taylor"):
        ctx, model = make_ctx(write_plan(cnn_model_block() + DIGITS_DATA))
        run(
            ctx,
            model,
            amount=0.5,
            criterion=criterion,
            calibration_batches=2,
            modules=["block1.conv1"],
        )
        chosen[criterion] = next(r["kept"] for r in ctx.history if r["module"] == "block1.bn1")
    assert len({tuple(k) for k in chosen.values()}) == 4
    ctx, model = make_ctx(write_plan(cnn_model_block() + DIGITS_DATA))
    gamma = model.block1.bn1.weight.detach().abs()
    run(ctx, model, amount=0.5, criterion="bn-scale", modules=["block1.conv1"])
    assert chosen["bn-scale"] == sorted(gamma.argsort(descending=True)[:32].tolist())


@pytest.mark.slow
def test_iterative_steps_fine_tune_in_between(cnn):
    ctx, model = cnn
    run(ctx, model, target={"macs": 0.4}, steps=2, finetune_epochs=0.5, round_to=8)
    steps = ctx.stage_report["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[0]["finetune"]["steps"] > 0 and "finetune" not in steps[1]
    first, last = steps[0]["macs"], steps[1]["macs"]
    assert last < first and ctx.stage_report["macs"]["ratio"] <= 0.4
    assert first / ctx.stage_report["macs"]["before"] <= 0.7  # halfway: 1 - 0.6 / 2
    assert steps[0]["finetune"]["final_metric"] > 0.9  # recovered before the second cut


def test_prune_once_takes_an_importance_override(cnn):
    ctx, model = cnn
    cfg = PruneConfig(amount=0.25, modules=["fc1"])
    entry = prune.prune_once(model, cfg, ctx, importance=lambda g: torch.arange(g.size).double())
    assert entry["removed"] == {"fc1": 32}
    kept = next(r["kept"] for r in ctx.history if r["module"] == "fc1")
    assert kept == list(range(32, 128))  # the lowest scores went


# ------------------------------------------------------------------ the text transformer


def test_heads_and_ffn_knobs_on_the_sample_transformer(write_plan):
    plan = (
        "model:\n"
        f"  checkpoint: {SAMPLES / 'text_transformer' / 'model.safetensors'}\n"
        "  architecture: sample_models.text_transformer.model:build\n"
        "  inputs:\n"
        "    input_ids: {shape: [2, 32], dtype: int64, low: 0, high: 4000}\n"
    )
    ctx, model = make_ctx(write_plan(plan))
    run(ctx, model, heads=0.5, ffn=0.25)
    for block in model.blocks:
        assert block.attn.num_heads == 2 and block.attn.query.out_features == 64
        assert block.ffn_in.out_features == 384 and block.norm1.normalized_shape == (128,)
    assert model.tokens.embedding_dim == 128 and model.head.out_features == 8
    kinds = {r["unit"] for r in ctx.history}
    assert kinds == {"heads", "channels"}
