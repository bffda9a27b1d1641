"""The distill stage on the sample models: objectives, teacher cache, data-free and few-shot
modes, and self-distilled pruning through the real prune engine."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from compressor.errors import PlanError, StageError
from compressor.graph.groups import CONSUMER, PRODUCER, Member, UnitGroup
from compressor.plan.load import load_plan
from compressor.run.context import RunContext, context_for_plan
from compressor.spec.base import LABELS, TEACHER, TRAIN_DATA
from compressor.stages import distill
from compressor.stages.distill.config import DistillConfig
from compressor.stages.distill.self_prune import SelfPruneConfig, schedule_fraction
from sample_models.digits_cnn.model import build
from tests.conftest import SAMPLES, cnn_model_block

DIGITS_DATA = "data:\n  train: builtin:digits?split=train\n  eval: builtin:digits?split=test\n"


make_ctx = context_for_plan  # the context and model a run starts from


def prune_fc1(model: nn.Module, keep: torch.Tensor, ctx: RunContext | None = None) -> None:
    """Remove fc1 units of the digits CNN by hand (and record it as the engine would)."""
    keep = keep.sort().values
    with torch.no_grad():
        fc1 = nn.Linear(model.fc1.in_features, len(keep))
        fc1.weight.copy_(model.fc1.weight[keep])
        fc1.bias.copy_(model.fc1.bias[keep])
        fc2 = nn.Linear(len(keep), model.fc2.out_features)
        fc2.weight.copy_(model.fc2.weight[:, keep])
        fc2.bias.copy_(model.fc2.bias)
    model.fc1, model.fc2 = fc1, fc2
    if ctx is not None:
        ctx.history += [
            {"module": "fc1", "dim": "out", "kept": keep.tolist()},
            {"module": "fc2", "dim": "in", "kept": keep.tolist()},
        ]


@pytest.fixture
def cnn(write_plan):
    """A digits-CNN context and a copy whose fc1 keeps 8 of 128 units (accuracy falls)."""
    ctx, model = make_ctx(write_plan(cnn_model_block() + DIGITS_DATA))
    prune_fc1(model, model.fc1.weight.norm(dim=1).argsort(descending=True)[:8], ctx)
    return ctx, model


def run(ctx: RunContext, model: nn.Module, **options) -> nn.Module:
    ctx.stage_report = {}
    return distill.apply(model, DistillConfig.model_validate(options), ctx)


# ------------------------------------------------------------------ config


def test_config_shorthands_and_requirements():
    cfg = DistillConfig.model_validate(
        {"cross_correlation": 0.02, "aligned": 0.5, "hidden": {"layers": ["fc1"]}}
    )
    assert cfg.cross_correlation.weight == 0.02 and cfg.aligned.weight == 0.5
    assert cfg.hidden.layers[0].student == "fc1" and cfg.hidden.layers[0].teacher is None
    # Data-free by default: no training data needed, but a teacher is.
    assert TRAIN_DATA not in cfg.requirements() and TEACHER in cfg.requirements()
    assert TEACHER not in DistillConfig(teacher="input").requirements()
    assert {TRAIN_DATA, LABELS} <= DistillConfig(few_shot=10).requirements()
    assert LABELS in DistillConfig(task=1.0).requirements()
    with pytest.raises(ValueError, match="not come before"):
        SelfPruneConfig(amount=0.5, start=0.5, end=0.2)
    with pytest.raises(ValueError, match="finetune_epochs: distillation itself trains"):
        SelfPruneConfig(amount=0.5, finetune_epochs=1)
    with pytest.raises(ValueError):
        DistillConfig.model_validate({"kd": 1, "temprature": 2})  # typo: unknown key
    with pytest.raises(ValueError, match="cannot tell what data source"):
        DistillConfig(data="corpus.docx")
    assert DistillConfig(data="corpus.txt").data == "corpus.txt"
    # The prune block's criterion may rank units (before gradients say anything): its needs count.
    assert (
        LABELS
        in DistillConfig.model_validate(
            {"prune": {"amount": 0.5, "criterion": "taylor"}}
        ).requirements()
    )


@pytest.mark.parametrize(
    ("metric", "kind"),
    [("accuracy", "kl"), ("cosine", "cosine"), ("spearman", "cosine"), ("mse", "mse")],
)
def test_kd_loss_follows_what_the_output_is(metric, kind):
    import types

    from compressor.stages.distill.losses import DistillObjective

    ctx = types.SimpleNamespace(
        device=torch.device("cpu"),
        plan=types.SimpleNamespace(data=types.SimpleNamespace(metric=metric)),
    )
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    objective = DistillObjective(DistillConfig(), student, teacher, ctx, has_labels=False)
    assert objective.kd_kind == kind and objective.task_weight == 0.0
    batch = types.SimpleNamespace(inputs={"input": torch.randn(8, 4)}, target=None)
    loss, logs = objective(student, batch)
    assert set(logs) == {"kd"} and loss.item() > 0


def test_self_distillation_needs_no_plan_teacher(write_plan):
    path = write_plan(
        cnn_model_block() + DIGITS_DATA + "teacher: none\nstages:\n"
        "  - distill: {max_steps: 2, teacher: input}\n"
    )
    ctx, model = make_ctx(path)
    prune_fc1(model, torch.arange(16))
    run(ctx, model, max_steps=2, teacher="input", cross_correlation={"layer": "fc1"})
    assert ctx.stage_report["training"]["steps"] == 2
    assert "projections" not in ctx.stage_report  # its teacher is itself: same widths


def test_teacher_from_a_checkpoint_spec(write_plan):
    # A wider CNN (another checkpoint, same 10 classes) teaches the sample CNN.
    wide = build(width=96)
    path = write_plan(
        cnn_model_block()
        + DIGITS_DATA
        + "teacher:\n  checkpoint: wide.safetensors\n"
        + "  architecture: sample_models.digits_cnn.model:build\n  kwargs: {width: 96}\n"
    )
    save_file(wide.state_dict(), str(path.parent / "wide.safetensors"))
    ctx, model = make_ctx(path)
    run(ctx, model, max_steps=1, hidden={"layers": ["block2"]})
    assert ctx.teacher() is not ctx.original and ctx.teacher().fc1.in_features == 192
    assert ctx.stage_report["projections"] == ["hidden0"]  # 128 student vs 192 teacher channels


def test_plan_without_teacher_is_refused_before_loading(write_plan):
    path = write_plan(
        cnn_model_block() + DIGITS_DATA + "teacher: none\nstages:\n  - distill: {epochs: 1}\n"
    )
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert any("needs a teacher" in p for p in info.value.problems)


# ------------------------------------------------------------------ training


@pytest.mark.slow
def test_distillation_recovers_a_pruned_cnn(cnn):
    ctx, model = cnn
    before = ctx.evaluate(model)
    run(ctx, model, epochs=2, lr=2e-3, hidden={"layers": ["fc1"]}, cross_correlation=0.01)
    after = ctx.evaluate(model)
    assert after > before + 0.03
    report = ctx.stage_report
    assert report["projections"] == ["hidden0"]  # fc1: 8 student vs 128 teacher units
    assert report["task_weight"] == 1.0 and report["kd_loss"] == "kl"
    assert report["cache"] is True  # auto: two passes over a small set
    assert report["training"]["steps"] == 44


@pytest.mark.slow
def test_teacher_cache_runs_the_teacher_once_and_changes_nothing(cnn, write_plan):
    ctx, model = cnn
    ctx2, model2 = make_ctx(write_plan(cnn_model_block() + DIGITS_DATA, "twin.yaml"))
    prune_fc1(model2, torch.tensor(sorted(ctx.history[0]["kept"])), ctx2)
    options = {"epochs": 3, "few_shot": 5, "batch_size": 10, "hidden": {"layers": ["block2"]}}
    calls = []
    handle = ctx.original.register_forward_hook(lambda *a: calls.append(1))
    run(ctx, model, cache_teacher=True, **options)
    handle.remove()
    assert len(calls) == 5  # one pass over the 50 examples, none in the 15 training steps
    assert ctx.stage_report["cache"] is True
    run(ctx2, model2, cache_teacher=False, **options)
    assert ctx2.stage_report["cache"] is False
    # Shuffled batches look up their own examples' outputs: training is the same.
    for (name, a), (_, b) in zip(
        model.state_dict().items(), model2.state_dict().items(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_run_directory_keeps_a_small_teacher_cache_and_not_a_large_one(cnn, tmp_path, monkeypatch):
    from compressor.stages.distill import teacher_cache

    ctx, model = cnn
    ctx.run_dir = tmp_path / ".run"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    options = {"max_steps": 2, "few_shot": 5, "cache_teacher": True}
    run(ctx, model, **options)
    kept = ctx.run_dir / "teacher_cache" / f"stage{ctx.stage_index:02d}.safetensors"
    assert ctx.stage_report["cache_file"] == str(kept) and kept.is_file()
    kept.unlink()
    # Over the limit: memory only (a resume runs the teacher again), and the report says so.
    monkeypatch.setattr(teacher_cache, "RUN_DIR_CACHE_BYTES", ctx.stage_report["cache_bytes"] - 1)
    model.load_state_dict(state)
    run(ctx, model, **options)
    assert ctx.stage_report["cache"] is True and ctx.stage_report["cache_file"] is None
    assert not kept.exists()
    # An explicit cache_file is always written, whatever its size.
    run(ctx, model, cache_file=str(tmp_path / "t.safetensors"), **options)
    assert (tmp_path / "t.safetensors").is_file()


def test_teacher_cache_file_is_reused_and_invalidated(cnn, tmp_path):
    ctx, model = cnn
    state = {k: v.clone() for k, v in model.state_dict().items()}
    options = {"max_steps": 2, "few_shot": 5, "cache_file": str(tmp_path / "t.safetensors")}
    run(ctx, model, **options)
    assert ctx.stage_report["cache_reused"] is False and (tmp_path / "t.safetensors").is_file()
    model.load_state_dict(state)
    run(ctx, model, **options)
    assert ctx.stage_report["cache_reused"] is True
    # Other layers are other teacher outputs: the stale file must not be used.
    run(ctx, model, hidden={"layers": ["fc1"]}, **options)
    assert ctx.stage_report["cache_reused"] is False


def test_hidden_layer_patterns_pair_in_order_and_must_agree(cnn):
    ctx, model = cnn
    run(ctx, model, max_steps=1, hidden={"layers": [r"re:block\d\.conv2"], "loss": "cosine"})
    assert ctx.stage_report["layers"] == [
        ["block1.conv2", "block1.conv2"],
        ["block2.conv2", "block2.conv2"],
    ]
    with pytest.raises(StageError, match="match 2 student and 1 teacher"):
        run(
            ctx,
            model,
            max_steps=1,
            hidden={"layers": [{"student": r"re:block\d\.conv2", "teacher": "fc1"}]},
        )
    run(ctx, model, max_steps=1, cross_correlation={"weight": 0.1, "layer": "fc1"})
    assert ctx.stage_report["projections"] == ["cc"]  # 8 student units, 128 teacher units
    with pytest.raises(StageError, match="no module named 'blok1'"):
        run(ctx, model, max_steps=1, hidden={"layers": ["blok1"]})
    # A conv map (a row per pixel) cannot be matched to a pooled layer (a row per example).
    with pytest.raises(StageError, match=r"cannot match student and teacher layers \(hidden0\)"):
        run(
            ctx,
            model,
            max_steps=1,
            hidden={"layers": [{"student": "block1.conv2", "teacher": "fc1"}]},
        )


# ------------------------------------------------------------ data-free and few-shot


@pytest.mark.slow
def test_data_free_distillation_on_synthetic_inputs(write_plan):
    plan = cnn_model_block() + "data:\n  eval: builtin:digits?split=test\n"
    ctx, model = make_ctx(write_plan(plan))
    prune_fc1(model, model.fc1.weight.norm(dim=1).argsort(descending=True)[:8])
    before = ctx.evaluate(model)
    running = model.stem[1].running_mean.clone()
    run(ctx, model, epochs=4, lr=1e-3, synthetic_size=256, synthetic_steps=20)
    assert torch.equal(model.stem[1].running_mean, running)  # synthetic statistics: not learnt
    report = ctx.stage_report
    assert report["data"] == "synthetic (256 examples)"
    assert report["task_weight"] == 0.0 and report["freeze_norm"] is True
    assert report["synthetic"]["refined"] and report["synthetic"]["batchnorm_layers"] == 6
    assert ctx.evaluate(model) > before + 0.05
    with pytest.raises(StageError, match="needs labelled data"):
        run(ctx, model, max_steps=1, data="synthetic", task=1.0)


def test_a_stage_that_only_harms_keeps_its_input_weights(cnn):
    ctx, model = cnn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Plain random inputs and a large step: the student can only get worse.
    run(ctx, model, epochs=1, lr=0.05, data="synthetic", synthetic_size=64, synthetic_steps=0)
    assert "kept_input_weights" in ctx.stage_report
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unlabelled_text_file_is_tokenized(tmp_path, write_plan):
    (tmp_path / "corpus.txt").write_text(
        "str.split returns a list of the words in the string\n"
        "dict.items returns a view of the mapping's items\n"
        "the debugger stops at a breakpoint\n"
        "a compound statement contains groups of other statements\n"
    )
    text_plan = (SAMPLES / "text_transformer" / "plan.yaml").read_text()
    text_plan = text_plan.replace(
        "model.safetensors", str(SAMPLES / "text_transformer" / "model.safetensors")
    )
    text_plan = text_plan.replace(
        "tokenizer.json", str(SAMPLES / "text_transformer" / "tokenizer.json")
    )
    ctx, model = make_ctx(write_plan(text_plan))
    with torch.no_grad():
        model.head.weight.mul_(0.5)  # a student that differs from its teacher
    run(ctx, model, epochs=2, max_steps=3, data="corpus.txt", batch_size=2, lr=1e-3)
    assert ctx.stage_report["data"] == "unlabelled corpus.txt"
    assert ctx.stage_report["task_weight"] == 0.0
    assert ctx.stage_report["training"]["steps"] == 3


def test_few_shot_trains_on_n_per_class(cnn):
    ctx, model = cnn
    run(ctx, model, epochs=1, few_shot=3, batch_size=10)
    assert ctx.stage_report["cache"] is False  # auto: one pass gains nothing from a cache
    assert ctx.stage_report["data"] == "train (few_shot: 3 per class, 30 examples)"
    assert ctx.stage_report["training"]["steps"] == 3


# ------------------------------------------------------------ self-distilled pruning


def test_recalibrate_batch_norms_uses_exactly_the_batch():
    from compressor.stages.distill.self_prune import recalibrate_batch_norms
    from compressor.stages.distill.teacher_cache import IndexedBatch

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    x = torch.randn(32, 3)
    assert recalibrate_batch_norms(model, IndexedBatch({"input": x})) == 1
    bn = model[1]
    assert torch.allclose(bn.running_mean, model[0](x).mean(0), atol=1e-6)
    assert bn.momentum == 0.1 and not model.training  # settings restored


def test_schedule_fraction_is_cubic_or_linear():
    assert schedule_fraction(0.0, "cubic") == 0.0 and schedule_fraction(1.0, "cubic") == 1.0
    assert schedule_fraction(0.5, "cubic") == pytest.approx(0.875)
    assert schedule_fraction(0.5, "linear") == 0.5


def _fc1_group(model: nn.Module) -> UnitGroup:
    width = model.fc1.out_features
    idx = torch.arange(width)
    members = [
        Member("fc1", model.fc1, PRODUCER, idx, idx),
        Member("fc2", model.fc2, CONSUMER, idx, idx),
    ]
    return UnitGroup("fc1", "channels", width, 1, 1, members, ("fc1", "fc2"))


@pytest.mark.slow
def test_self_distilled_pruning_follows_the_schedule(write_plan):
    ctx, model = make_ctx(write_plan(cnn_model_block() + DIGITS_DATA))
    run(
        ctx,
        model,
        epochs=1,
        lr=1e-3,
        hidden={"layers": ["fc1"]},
        aligned=0.1,
        prune={"amount": 0.5, "steps": 3, "start": 0.0, "end": 0.5},
    )
    events = ctx.stage_report["prune"]["events"]
    assert [e["step"] for e in events] == [1, 6, 11]  # 0, 1/4, 1/2 of 22 steps
    # Cubic: 1 - (1 - k/3)^3 of the 64 units fc1 loses in the end -> 45, 62, 64 removed.
    assert [e["progress"] for e in events] == pytest.approx([0.7037, 0.963, 1.0], abs=1e-4)
    assert [e["removed"]["fc1"] for e in events] == [45, 17, 2]
    assert model.fc1.out_features == 64 and model.fc2.in_features == 64
    # Importance came from the distillation gradients (BN in training mode makes them non-zero).
    assert all(e["importance"] == "distill-taylor" for e in events)
    # fc1 narrows at every event: its projection to the teacher's 128 units is refit each time.
    assert all(e["projections_refit"] == ["hidden0"] for e in events)
    # Every conv and linear (pruned on both sides) maps back to its pretrained units through
    # the engine's history.
    assert all(e["aligned"] == {"aligned_modules": 8, "unmatched": []} for e in events)
    assert model.block1.conv1.out_channels == 32 and model.block2.conv2.out_channels == 64
    assert ctx.evaluate(model) > 0.9  # it kept learning on the shrinking model


def test_zero_distillation_gradients_fall_back_to_the_criterion(write_plan):
    # Student == teacher, batch norms frozen, no task loss: the first event sees zero
    # gradients (FINDINGS: first-order importance on KD is 0 before any pruning).
    ctx, model = make_ctx(write_plan(cnn_model_block() + DIGITS_DATA))
    run(
        ctx,
        model,
        max_steps=4,
        task=0.0,
        freeze_norm=True,
        prune={"amount": 0.25, "steps": 2, "end": 0.5, "modules": ["fc1"]},
    )
    events = ctx.stage_report["prune"]["events"]
    assert [e["importance"] for e in events] == ["l2", "distill-taylor"]
    assert model.fc1.out_features == 96


def test_taylor_scores_sum_what_each_unit_owns():
    from compressor.stages.distill.self_prune import TaylorScores

    model = nn.Sequential()
    model.fc1, model.fc2 = nn.Linear(3, 2), nn.Linear(2, 1)
    for p in model.parameters():
        p.data.fill_(1.0)
        p.grad = torch.ones_like(p)
    model.fc1.weight.grad[1] = 2.0  # unit 1's incoming weights matter twice as much
    scores = TaylorScores()
    scores.update(model)
    scores.update(model)
    group = _fc1_group(model)
    # fc1 rows: unit 0 owns 3 weights + bias = 4, unit 1 owns 3 * 2 + 1 = 7 (per step, the
    # mean of 2 steps); fc2 columns: 1 each. Each member is scaled to mean 1, then averaged.
    expected = [(4 / 5.5 + 1) / 2, (7 / 5.5 + 1) / 2]
    assert scores.group_scores(group).tolist() == pytest.approx(expected)
    assert scores.informative()
    scores.reset()
    assert not scores.informative()
