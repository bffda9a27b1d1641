"""The share stage through a real RunContext on the sample models: the config union and its
errors, merge-neurons beating l2 pruning at the same width with no training, the report's
honesty (exact vs approximate groups, size not latency, storage only), and files that reload
to exactly the compacted model."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from compressor.formats.architecture import ArchitectureRef
from compressor.formats.compacted import load_compressed, save_compressed
from compressor.formats.manifest import diff, snapshot
from compressor.spec.base import CALIBRATION_DATA, EXAMPLE_INPUTS
from compressor.stages import prune, share
from compressor.stages.prune.config import PruneConfig
from compressor.stages.registry import get_stage
from tests.unit.graph.helpers import onnx_max_diff
from tests.unit.sharing.helpers import sample_ctx

CONFIG = TypeAdapter(get_stage("share").config)


def run(ctx, model, **options):
    ctx.stage_report = {}
    ctx.stage_name = "share"
    return share.apply(model, CONFIG.validate_python(options), ctx)


@pytest.fixture(scope="module")
def mlp():
    return sample_ctx("digits_mlp")


# ------------------------------------------------------------------ config


def test_config_is_a_union_on_method_with_strict_options():
    assert isinstance(
        CONFIG.validate_python({"method": "fuse-layers", "pairs": 1}), share.FuseLayersConfig
    )
    with pytest.raises(ValidationError, match="give 'method': one of merge-neurons"):
        CONFIG.validate_python({"amount": 0.3})
    with pytest.raises(ValidationError, match="give 'method'"):
        CONFIG.validate_python({"method": "merge-neuron", "amount": 0.3})
    with pytest.raises(ValidationError, match="Extra inputs"):
        CONFIG.validate_python({"method": "merge-neurons", "amount": 0.3, "k": 16})
    with pytest.raises(ValidationError, match="say how much to merge"):
        CONFIG.validate_python({"method": "merge-neurons"})
    with pytest.raises(ValidationError, match="not both"):
        CONFIG.validate_python({"method": "fuse-layers", "amount": 0.2, "pairs": 2})
    with pytest.raises(ValidationError, match=r"less than or equal to 0\.5"):
        CONFIG.validate_python({"method": "fuse-layers", "amount": 0.8})
    with pytest.raises(ValidationError, match="less than or equal to 256"):
        CONFIG.validate_python({"method": "cluster-weights", "k": 300})
    with pytest.raises(ValidationError, match="regular expression"):
        CONFIG.validate_python({"method": "cluster-weights", "ignore": ["re:(x"]})


def test_requirements_follow_the_options():
    def needs(**options):
        return CONFIG.validate_python(options).requirements()

    assert needs(method="merge-neurons", amount=0.2) == {EXAMPLE_INPUTS}  # auto: data optional
    assert CALIBRATION_DATA in needs(method="merge-neurons", amount=0.2, by="activations")
    assert CALIBRATION_DATA in needs(method="merge-neurons", amount=0.2, recalibrate=True)
    assert needs(method="fuse-layers", pairs=1) == set()
    assert needs(method="cluster-weights") == set()


# ------------------------------------------------------------------ merge-neurons


def test_merge_beats_l2_pruning_at_the_same_width_and_reloads_exactly(mlp, tmp_path):
    ctx, original = mlp
    pruned = copy.deepcopy(original)
    ctx.stage_report = {}
    prune.apply(pruned, PruneConfig(amount=0.5, criterion="l2"), ctx)
    model = copy.deepcopy(original)
    before = snapshot(model)
    ctx.history = []
    run(ctx, model, method="merge-neurons", amount=0.5)
    widths = [model.features[0].out_features, model.features[2].out_features]
    assert (
        widths == [128, 128] == [pruned.features[0].out_features, pruned.features[2].out_features]
    )
    merged_acc, pruned_acc = ctx.evaluate(model), ctx.evaluate(pruned)
    assert merged_acc > pruned_acc + 0.02, (merged_acc, pruned_acc)  # 0.964 vs 0.911
    report = ctx.stage_report
    assert report["params"]["ratio"] < 0.5 and report["units"]["features.0"] == {
        "before": 256,
        "after": 128,
    }
    assert report["groups"]["features.0"]["homogeneous"] is True
    assert report["skipped"] == {"classifier": "it sets the width of a model output"}
    assert any("positively homogeneous" in n for n in report["notes"])
    assert {r["stage"] for r in ctx.history} == {"share"}
    assert {r["module"] for r in ctx.history} == {"features.0", "features.2", "classifier"}
    path = tmp_path / "model.safetensors"
    save_compressed(
        model,
        path,
        manifest=diff(before, model),
        history=ctx.history,
        architecture=ArchitectureRef("factory", "sample_models.digits_mlp.model:build"),
    )
    loaded = load_compressed(path).model
    x = ctx.example_inputs(8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(**x), model(**x))
    assert onnx_max_diff(model, x, tmp_path / "model.onnx") < 1e-4


def test_targeting_rounding_and_threshold(mlp):
    ctx, original = mlp
    model = copy.deepcopy(original)
    run(ctx, model, method="merge-neurons", amounts={"features.2": 0.3}, round_to=16)
    assert model.features[0].out_features == 256  # not targeted
    assert model.features[2].out_features == 176  # 256 - 77 merged, rounded to 16
    model = copy.deepcopy(original)
    run(ctx, model, method="merge-neurons", amount=0.5, modules=["features.0"])
    assert model.features[0].out_features == 128 and model.features[2].out_features == 256
    model = copy.deepcopy(original)
    run(ctx, model, method="merge-neurons", threshold=0.6, similarity="cosine")
    report = ctx.stage_report["groups"]
    assert all(g["similarity"]["min"] >= 0.6 for g in report.values())
    assert 0 < report["features.0"]["units_before"] - report["features.0"]["units_after"] < 230


@pytest.mark.slow
def test_cnn_merge_recalibrates_norms_and_beats_pruning():
    ctx, original = sample_ctx("digits_cnn")
    pruned = copy.deepcopy(original)
    ctx.stage_report = {}
    prune.apply(pruned, PruneConfig(amount=0.25, criterion="l2", round_to=8), ctx)
    model = copy.deepcopy(original)
    run(ctx, model, method="merge-neurons", amount=0.25, round_to=8, calibration_batches=4)
    report = ctx.stage_report
    assert report["recalibrated"] and all(
        "bn" in n or "down.1" in n for n in report["recalibrated"]
    )
    assert set(report["groups"]) == {"stem.0", "block1.conv1", "down.0", "block2.conv1", "fc1"}
    assert all(g["homogeneous"] for g in report["groups"].values())  # ReLU + residual adds
    assert model.block1.conv1.out_channels == 48 == pruned.block1.conv1.out_channels
    merged_acc, pruned_acc = ctx.evaluate(model), ctx.evaluate(pruned)
    assert merged_acc > 0.97 and merged_acc > pruned_acc + 0.1, (merged_acc, pruned_acc)


@pytest.mark.slow
def test_transformer_merges_ffn_width_approximately_and_skips_heads():
    ctx, model = sample_ctx("text_transformer")
    run(ctx, model, method="merge-neurons", amount=0.25)
    report = ctx.stage_report
    assert set(report["groups"]) == {"blocks.0.ffn_in", "blocks.1.ffn_in"}
    assert model.blocks[0].ffn_in.out_features == 384
    assert all(g["homogeneous"] is False for g in report["groups"].values())  # GELU
    assert "softmax" in report["skipped"]["blocks.0.attn"]
    assert "hidden size" in report["skipped"]["tokens"]
    assert any("GELU" in n and "approximation" in n for n in report["notes"])


# ------------------------------------------------------------------ fuse / cluster reports


def test_fuse_report_says_size_not_latency():
    ctx, model = sample_ctx("text_transformer")
    run(ctx, model, method="fuse-layers", amount=0.25, similarity="cka")
    report = ctx.stage_report
    assert report["candidates"] == 12 and len(report["pairs"]) == 3
    assert all({"kept", "tied", "similarity", "params"} <= set(p) for p in report["pairs"])
    assert report["bytes_freed"] == 4 * (report["params"]["before"] - report["params"]["after"])
    assert any("reduces size, not latency" in n for n in report["notes"])
    tied = report["pairs"][0]
    kept = model.get_submodule(tied["kept"])
    assert model.get_submodule(tied["tied"]).weight is kept.weight


def test_cluster_report_is_storage_only_and_warns_about_later_training(write_plan):
    from tests.conftest import cnn_model_block
    from tests.unit.sharing.helpers import make_ctx

    plan = write_plan(
        cnn_model_block()
        + "stages:\n  - share: {method: cluster-weights, k: 16}\n  - finetune: {epochs: 1}\n"
        + "data:\n  train: builtin:digits?split=train\n"
    )
    ctx, model = make_ctx(plan)
    ctx.stage_index = 0
    run(ctx, model, method="cluster-weights", k=16)
    report = ctx.stage_report
    assert len(report["tensors"]) == 7 and all(t["distinct"] <= 16 for t in report["tensors"])
    storage = report["storage"]
    assert storage["float_bytes"] / storage["codebook_bytes"] > 7
    assert "storage reduction only" in report["notes"][0]
    assert any("finetune" in n and "put cluster-weights last" in n for n in report["notes"])
    assert int(torch.unique(model.fc1.weight).numel()) <= 16


def test_nothing_mergeable_is_an_error_naming_the_reason():
    from compressor.errors import StageError

    ctx, model = sample_ctx("text_transformer")
    with pytest.raises(StageError, match="softmax"):
        run(ctx, model, method="merge-neurons", amount=0.5, modules=["blocks.0.attn"])
    with pytest.raises(StageError, match="nothing to fuse"):
        run(ctx, model, method="fuse-layers", pairs=1, modules=["head"])
