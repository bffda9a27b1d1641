"""Aligned weight regularisation on small models pruned by hand (with and without a history)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.errors import StageError
from compressor.stages import finetune
from compressor.stages.finetune import FinetuneConfig
from compressor.training.aligned import AlignedConfig, AlignedRegularizer, kept_indices, match_units


class MLP(nn.Module):
    def __init__(self, hidden: int = 8):
        super().__init__()
        self.fc1 = nn.Linear(6, hidden)
        self.fc2 = nn.Linear(hidden, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def pruned_copy(model: MLP, keep: list[int]) -> MLP:
    idx = torch.tensor(keep)
    small = MLP(len(keep))
    with torch.no_grad():
        small.fc1.weight.copy_(model.fc1.weight[idx])
        small.fc1.bias.copy_(model.fc1.bias[idx])
        small.fc2.weight.copy_(model.fc2.weight[:, idx])
        small.fc2.bias.copy_(model.fc2.bias)
    return small


KEEP = [0, 2, 5, 7]
HISTORY = [
    {"module": "fc1", "dim": "out", "kept": KEEP},
    {"module": "fc2", "dim": "in", "kept": KEEP},
]


@pytest.fixture
def pretrained() -> MLP:
    torch.manual_seed(0)
    return MLP().eval()


def test_kept_indices_compose_successive_edits():
    history = [
        {"module": "fc1", "dim": "out", "kept": [0, 2, 5, 7]},
        {"module": "fc1", "dim": 0, "indices": [1, 3]},  # of the survivors: 2 and 7
        {"module": "fc2", "dim": "in", "kept": [4]},
        {"op": "replace", "module": "attn"},  # not a slicing edit: ignored
    ]
    kept = kept_indices(history)
    assert kept[("fc1", "out")].tolist() == [2, 7]
    assert kept[("fc2", "in")].tolist() == [4]
    assert ("attn", "out") not in kept


def test_exactly_pruned_units_have_zero_penalty(pretrained):
    student = pruned_copy(pretrained, KEEP)
    reg = AlignedRegularizer(AlignedConfig(), pretrained, lambda: HISTORY)
    info = reg.attach(student)
    assert info == {"aligned_modules": 2, "unmatched": []}
    loss, logs = reg(student)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert logs == {
        "aligned_l2": pytest.approx(0.0, abs=1e-7),
        "aligned_cosine": pytest.approx(0.0, abs=1e-6),
    }


def test_penalty_by_hand_separates_value_from_direction(pretrained):
    student = pruned_copy(pretrained, KEEP)
    reg = AlignedRegularizer(
        AlignedConfig(weight=2.0, l2=1.0, cosine=3.0), pretrained, lambda: HISTORY
    )
    w0 = pretrained.fc1.weight.detach()[KEEP]
    with torch.no_grad():
        student.fc1.weight[0] *= 2.0  # same direction, twice the length
    _, logs = reg(student)
    # Relative L2 of fc1.weight is |w0[0]|^2 / |W0|^2, averaged over 4 tensors (2 weights,
    # 2 biases); the direction did not change, so the cosine term stays 0.
    expected_l2 = (w0[0].pow(2).sum() / w0.pow(2).sum()).item() / 4
    assert logs["aligned_l2"] == pytest.approx(expected_l2, rel=1e-5)
    assert logs["aligned_cosine"] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        student.fc1.weight[0] = -w0[0]  # reversed: cosine -1 for one of 4 + 4 units
    loss, logs = reg(student)
    assert logs["aligned_cosine"] == pytest.approx(2.0 / 8, rel=1e-5)
    assert loss.item() == pytest.approx(2.0 * (logs["aligned_l2"] + 3.0 * 2.0 / 8), rel=1e-5)


def test_units_are_matched_without_a_history(pretrained):
    student = pruned_copy(pretrained, KEEP)
    reg = AlignedRegularizer(AlignedConfig(), pretrained, lambda: [])
    assert reg.attach(student)["unmatched"] == []
    assert reg(student)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert match_units(student.fc1.weight, pretrained.fc1.weight, 0).tolist() == KEEP


def test_tensor_pruned_on_both_axes_without_history_is_reported(pretrained):
    class Deep(nn.Module):
        def __init__(self, h1: int, h2: int):
            super().__init__()
            self.fc1, self.mid, self.fc2 = nn.Linear(6, h1), nn.Linear(h1, h2), nn.Linear(h2, 4)

    reg = AlignedRegularizer(AlignedConfig(), Deep(8, 8), lambda: [])
    assert "mid" in reg.attach(Deep(4, 4))["unmatched"]
    with pytest.raises(StageError, match="no module to align"):
        AlignedRegularizer(AlignedConfig(modules=["nothing"]), Deep(8, 8)).attach(Deep(8, 8))


def test_edits_loaded_with_the_checkpoint_are_not_replayed(pretrained):
    # The original was loaded already pruned: its own history must not slice it again.
    ctx = types.SimpleNamespace(
        original=pretrained,
        loaded=types.SimpleNamespace(
            history=[{"module": "fc1", "dim": "out", "kept": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}]
        ),
    )
    ctx.history = [*ctx.loaded.history, *HISTORY]
    reg = AlignedRegularizer.from_context(AlignedConfig(), ctx)
    student = pruned_copy(pretrained, KEEP)
    assert reg.attach(student)["unmatched"] == []
    assert reg(student)[0].item() == pytest.approx(0.0, abs=1e-7)


def test_references_follow_further_pruning(pretrained):
    history = list(HISTORY)
    student = pruned_copy(pretrained, KEEP)
    reg = AlignedRegularizer(AlignedConfig(), pretrained, lambda: history)
    reg.attach(student)
    # Prune again (keep survivors 1 and 3 = original 2 and 7); the call re-attaches by itself.
    student = pruned_copy(pretrained, [2, 7])
    history += [
        {"module": "fc1", "dim": "out", "kept": [1, 3]},
        {"module": "fc2", "dim": "in", "kept": [1, 3]},
    ]
    assert reg(student)[0].item() == pytest.approx(0.0, abs=1e-7)


def test_training_with_the_term_stays_aligned(pretrained):
    """On a new task, the regularised student keeps its units' pretrained directions."""
    torch.manual_seed(1)
    x, y = torch.randn(256, 6), torch.randint(0, 4, (256,))

    def fit(aligned: bool) -> float:
        student = pruned_copy(pretrained, KEEP)
        reg = AlignedRegularizer(AlignedConfig(weight=1.0), pretrained, lambda: HISTORY)
        opt = torch.optim.Adam(student.parameters(), lr=0.05)
        for _ in range(100):
            loss = F.cross_entropy(student(x), y)
            if aligned:
                loss = loss + reg(student)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
        ref = pretrained.fc1.weight.detach()[KEEP]
        return F.cosine_similarity(student.fc1.weight.detach(), ref, dim=1).mean().item()

    free, kept = fit(False), fit(True)
    assert kept > 0.95 and kept > free + 0.05


def test_finetune_stage_wires_the_term(pretrained, monkeypatch):
    """finetune with aligned: adds the term to its loss and reports what it aligned."""
    student = pruned_copy(pretrained, KEEP)
    seen = {}

    def fake_train(model, cfg, ctx, loss_fn, **kwargs):
        batch = types.SimpleNamespace(
            inputs={"x": torch.randn(5, 6)}, target=torch.zeros(5, dtype=torch.long)
        )
        with torch.no_grad():
            model.fc1.weight[0] *= -1.0
        seen["loss"], seen["logs"] = loss_fn(model, batch)
        seen["task"] = F.cross_entropy(model(batch.inputs["x"]), batch.target)
        return types.SimpleNamespace(to_dict=dict)

    monkeypatch.setattr(finetune, "train", fake_train)
    ctx = types.SimpleNamespace(
        original=pretrained,
        history=HISTORY,
        stage_report={},
        loaded=types.SimpleNamespace(history=[]),
        train_loader=lambda **kw: None,
    )
    finetune.apply(student, FinetuneConfig.model_validate({"aligned": 0.5}), ctx)
    assert ctx.stage_report["aligned"] == {"aligned_modules": 2, "unmatched": []}
    assert seen["logs"]["aligned_cosine"] == pytest.approx(2.0 / 8, rel=1e-5)
    logs = seen["logs"]
    expected = seen["task"] + 0.5 * (logs["aligned_l2"] + logs["aligned_cosine"])
    assert seen["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_references_match_the_prune_engine_history(write_plan):
    """Right after the real engine prunes (weights copied, not changed) the penalty is 0."""
    from compressor.data.bundle import DataBundle
    from compressor.formats.loading import load_model
    from compressor.plan.load import load_plan
    from compressor.run.context import RunContext
    from compressor.stages.prune.config import PruneConfig
    from compressor.stages.prune.stage import prune_once
    from tests.conftest import cnn_model_block

    plan = load_plan(write_plan(cnn_model_block())).plan
    loaded = load_model(plan.model)
    data = DataBundle(plan, Path("."), loaded.input_specs)
    ctx = RunContext(plan, Path("."), loaded, torch.device("cpu"), data, quiet=True)
    ctx.original = ctx.frozen_copy(loaded.model)
    model = loaded.model
    prune_once(model, PruneConfig(amount=0.5, criterion="l1"), ctx)
    assert model.block1.conv1.out_channels == 32 and model.fc1.in_features == 64
    reg = AlignedRegularizer.from_context(AlignedConfig(), ctx)
    assert reg.attach(model) == {"aligned_modules": 8, "unmatched": []}
    assert reg(model)[0].item() == pytest.approx(0.0, abs=1e-6)
