"""Training safety: a NaN/Inf loss stops the stage and keeps the last good weights (and the
run then fails with exit 3 after exporting them); a metric that collapses below the stage's
``min_metric`` stops it early with the best weights."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from rich.console import Console

from compressor.data.batches import Batch
from compressor.run.state import diverged_stages
from compressor.training.loop import TrainingOptions, train


def make_ctx(metrics: list[float] | None = None) -> SimpleNamespace:
    """The parts of a RunContext that ``train`` uses; ``metrics`` are returned by successive
    evaluations (None: no eval data)."""
    values = iter(metrics or [])
    logged: list[str] = []
    return SimpleNamespace(
        device=torch.device("cpu"),
        distributed=None,
        quiet=True,
        is_main_process=True,
        console=Console(quiet=True),
        stage_report={},
        logged=logged,
        log=logged.append,
        stage_seed=lambda offset=0: 7 + offset,
        metric=lambda: SimpleNamespace(higher_is_better=True) if metrics is not None else None,
        evaluate=lambda model: next(values) if metrics is not None else None,
    )


def batches(n: int = 4) -> list[Batch]:
    generator = torch.Generator().manual_seed(0)
    return [
        Batch({"x": torch.randn(8, 4, generator=generator)}, torch.randint(0, 3, (8,)))
        for _ in range(n)
    ]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def loss_that_breaks_at(step: int, value: float):
    calls = {"n": 0}

    def loss_fn(m, batch):
        loss = nn.functional.cross_entropy(m(batch.inputs["x"]), batch.target)
        calls["n"] += 1
        if calls["n"] == step + 1:
            loss = loss * value
        return loss, {}

    return loss_fn


def weights(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_and_restores_the_weights_of_the_last_good_epoch(bad):
    # Reference: the same training stopped cleanly after one epoch (4 steps).
    reference = model()
    opts = TrainingOptions(epochs=3, lr=0.1, schedule="constant")  # epoch 1 alike in both
    train(
        reference,
        opts.model_copy(update={"epochs": 1}),
        make_ctx(),
        loss_that_breaks_at(99, 1),
        loader=batches(),
    )

    trained, ctx = model(), make_ctx()
    summary = train(
        trained, opts, ctx, loss_that_breaks_at(6, bad), loader=batches(), description="finetune"
    )
    assert summary.steps == 6  # stopped in the second epoch, at the bad step
    assert "non-finite loss" in summary.stopped and "step 6" in summary.stopped
    for key, value in weights(trained).items():
        assert torch.equal(value, reference.state_dict()[key]), key  # end of epoch 1
        assert torch.isfinite(value).all()
    assert ctx.stage_report["diverged"] == [{"step": 6, "loss": str(bad), "during": "finetune"}]
    assert any("non-finite loss" in line for line in ctx.logged)


def test_non_finite_loss_on_the_first_step_keeps_the_original_weights():
    trained = model()
    before = weights(trained)
    summary = train(
        trained,
        TrainingOptions(epochs=1),
        make_ctx(),
        loss_that_breaks_at(0, float("nan")),
        loader=batches(),
    )
    assert summary.steps == 0
    assert all(torch.equal(v, before[k]) for k, v in weights(trained).items())


def test_finite_training_records_no_divergence():
    ctx = make_ctx()
    summary = train(
        model(), TrainingOptions(epochs=2), ctx, loss_that_breaks_at(99, 1), loader=batches()
    )
    assert summary.stopped is None and summary.steps == 8
    assert "diverged" not in ctx.stage_report


def test_metric_collapse_below_min_metric_stops_early_with_the_best_weights():
    trained = model()
    # Evaluations after epochs 1, 2, 3: the metric collapses after the second.
    ctx = make_ctx(metrics=[0.9, 0.95, 0.2, 0.97])
    best = {}

    def remember(step, total):
        if step == 8:  # end of epoch 2, the best evaluation
            best.update(weights(trained))
        return False

    summary = train(
        trained,
        TrainingOptions(epochs=4, lr=0.5, min_metric=0.5),
        ctx,
        loss_that_breaks_at(99, 1),
        loader=batches(),
        on_step=remember,
    )
    assert summary.steps == 12  # three epochs of four, not four
    assert "crossed min_metric 0.5" in summary.stopped
    assert summary.best_metric == 0.95 and summary.final_metric == 0.95
    assert all(torch.equal(v, best[k]) for k, v in weights(trained).items())
    assert "diverged" not in ctx.stage_report  # a planned stop, not a failure


def test_diverged_stages_name_stage_step_and_loss():
    reports = [
        {"index": 0, "name": "prune"},
        {
            "index": 1,
            "name": "distill",
            "diverged": [{"step": 12, "loss": "inf", "during": "distill"}],
        },
        {
            "index": 2,
            "name": "prune",
            "diverged": [{"step": 3, "loss": "nan", "during": "prune step 1/2: fine-tune"}],
        },
    ]
    found = diverged_stages(reports)
    assert [d["stage"] for d in found] == [1, 2]
    assert found[0]["message"] == (
        "stage 1 (distill) stopped at training step 12: the loss was inf; its last good "
        "weights were kept"
    )
    assert (
        "stage 2 (prune, prune step 1/2: fine-tune) stopped at training step 3"
        in (found[1]["message"])
    )


def test_a_diverged_run_exports_reports_and_exits_3_also_after_resume(tmp_path):
    from safetensors.torch import save_file

    from compressor.formats.reload import load
    from tests.e2e.runs import assert_fails_cleanly, invoke, mlp_plan

    x = torch.rand(64, 64)
    x[9, 1] = float("nan")
    save_file({"x": x, "labels": torch.randint(0, 10, (64,))}, str(tmp_path / "nan.safetensors"))
    data = "  train: nan.safetensors\n  eval: builtin:digits?split=test\n  batch_size: 16\n"
    plan = tmp_path / "plan.yaml"
    plan.write_text(mlp_plan("  - finetune: {epochs: 1}\n", data=data))
    out = tmp_path / "out"

    first = invoke("run", plan, "--out", out, "--no-bench")
    assert_fails_cleanly(first, 3, "training diverged", "stage 0 (finetune)")
    report = json.loads((out / "report.json").read_text())
    assert report["diverged"][0]["stage"] == 0 and report["diverged"][0]["loss"] == "nan"
    assert "stage 0 (finetune) stopped at training step" in (out / "report.md").read_text()
    # The exported model holds the last good weights: finite, and as accurate as the original.
    model_file = load(out / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in model_file.parameters())
    assert report["metric"]["after"] == report["metric"]["before"]

    again = invoke("run", plan, "--out", out, "--no-bench", "--resume")
    assert_fails_cleanly(again, 3, "training diverged", "stage 0 (finetune)")
    assert json.loads((out / "report.json").read_text())["resumed_stages"] == [0]
