"""merge-neurons on tiny models with planted duplicates: exact behind ReLU-like paths (also
through batch norm and a residual add), approximate behind GELU and said so, the greedy
planner's choices, and the groups it refuses."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from compressor.graph import StructureGraph
from compressor.stages.share.merge import merge_neurons, plan_merges
from compressor.stages.share.units import eligible, norm_parents, recalibrate_norms
from tests.unit.sharing.models import (
    TinyMLP,
    TinyResidual,
    plant_proportional,
    plant_residual_channel,
    random_norm_stats,
)

# Unit 3 = 2.5 x unit 0, unit 4 duplicates unit 1, unit 5 = 0.3 x unit 2.
PLANTED = {3: (0, 2.5), 4: (1, 1.0), 5: (2, 0.3)}


def planted_mlp(act: nn.Module) -> TinyMLP:
    torch.manual_seed(0)
    return plant_proportional(TinyMLP(act), PLANTED).eval()


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1)], ids=["relu", "leaky_relu"])
def test_proportional_units_behind_relu_merge_exactly(act):
    model = planted_mlp(act)
    x = torch.randn(256, 8)
    with torch.no_grad():
        expected = model(x)
    result = merge_neurons(model, {"x": x[:2]}, count_for=lambda g: 3)
    assert model.fc1.out_features == 3 and model.fc2.in_features == 3
    assert model.fc1.weight.shape == (3, 8) and model.fc2.weight.shape == (3, 3)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5, rtol=0)
    details = result.groups["fc1"]
    assert details["merged"] == 3 and details["dropped"] == 0
    assert details["homogeneous"] and details["exact"]
    assert details["similarity"]["min"] == pytest.approx(1.0)
    assert {r["module"] for r in result.history} == {"fc1", "fc2"}
    assert result.skipped == {"fc2": "it sets the width of a model output"}


def test_pruning_the_same_units_is_not_exact():
    # The control: dropping the planted units (what pruning does) changes the outputs.
    model = planted_mlp(nn.ReLU())
    x = torch.randn(256, 8)
    with torch.no_grad():
        expected = model(x)
    graph = StructureGraph(model, {"x": x[:2]})
    graph.remove(graph.group("fc1"), [3, 4, 5])
    with torch.no_grad():
        assert (model(x) - expected).abs().max() > 1e-2


def test_gelu_path_is_found_not_homogeneous_and_only_duplicates_stay_exact():
    model = planted_mlp(nn.GELU())
    x = torch.randn(256, 8)
    with torch.no_grad():
        expected = model(x)
    result = merge_neurons(model, {"x": x[:2]}, count_for=lambda g: 3)
    details = result.groups["fc1"]
    assert details["homogeneous"] is False and details["exact"] is False
    with torch.no_grad():
        assert (model(x) - expected).abs().max() > 1e-3  # scaled units are approximations
    # A duplicate (scale 1) is exact whatever the activation.
    model = plant_proportional(TinyMLP(nn.GELU()), {4: (1, 1.0)}).eval()
    with torch.no_grad():
        expected = model(x)
    merge_neurons(model, {"x": x[:2]}, count_for=lambda g: 1)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5, rtol=0)


def test_batch_norm_and_residual_channel_merge_exactly():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyResidual()
    random_norm_stats(model, generator)
    plant_residual_channel(model, j=4, i=1, s=1.7)
    model.eval()
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    result = merge_neurons(model, {"x": x[:2]}, count_for=lambda g: 1 if g.id == "stem" else 0)
    assert model.stem.out_channels == 5 and model.conv2.out_channels == 5
    assert model.bn0.num_features == 5 and model.head.in_features == 5
    assert result.groups["stem"]["exact"]
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5, rtol=0)


def test_a_different_scale_in_one_branch_is_not_proportional():
    # Proportional in the stem but not in the block's branch: no exact partner exists.
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyResidual()
    random_norm_stats(model, generator)
    plant_residual_channel(model, j=4, i=1, s=1.7)
    with torch.no_grad():
        model.bn2.weight[4] = 0.5 * model.bn2.weight[1]
    model.eval()
    result = merge_neurons(
        model, {"x": torch.randn(2, 1, 8, 8)}, count_for=lambda g: int(g.id == "stem")
    )
    assert result.groups["stem"]["similarity"]["min"] < 0.99
    assert not result.groups["stem"]["exact"]


def test_plan_merges_takes_the_most_alike_first_and_never_folds_a_negative_multiple():
    torch.manual_seed(0)
    base = torch.randn(3, 5, dtype=torch.float64)
    vectors = torch.cat([base, 2 * base[:1], -base[1:2]])  # 3 = 2 x unit 0, 4 = -unit 1
    outgoing = torch.ones(5, 4, dtype=torch.float64)
    (first,) = plan_merges(vectors, outgoing, count=1)
    assert {first.removed, first.kept} == {0, 3} and first.similarity == pytest.approx(1.0)
    assert first.scale == pytest.approx(2.0 if first.kept == 0 else 0.5)
    # Unit 4 = -unit 1 has no positive partner: through a ReLU it cannot stand in for unit 1,
    # so the pair is a plain removal (scale 0) unless negative scales are allowed.
    negative = plan_merges(vectors[[1, 4]], outgoing[:2], count=1)[0]
    assert negative.scale == 0.0
    assert plan_merges(vectors[[1, 4]], outgoing[:2], count=1, positive=False)[0].scale < 0


def test_threshold_stops_at_the_first_pair_below_it():
    model = planted_mlp(nn.ReLU())
    result = merge_neurons(model, {"x": torch.randn(2, 8)}, count_for=lambda g: 5, threshold=0.999)
    assert result.groups["fc1"]["units_after"] == 3  # only the three planted pairs qualify
    assert (
        plan_merges(torch.eye(4, dtype=torch.float64), torch.ones(4, 2), count=3, threshold=0.5)
        == []
    )


def test_groups_that_cannot_merge_say_why():
    class NormAfterAct(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.norm, self.fc2 = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2)

        def forward(self, x):
            return self.fc2(self.norm(torch.relu(self.fc1(x))))

    model = NormAfterAct().eval()
    inputs = {"x": torch.randn(2, 4)}
    graph = StructureGraph(model, inputs)
    reason = eligible(graph.group("fc1"), norm_parents(model, inputs))
    assert isinstance(reason, str) and "norm" in reason and "LayerNorm" in reason
    with torch.no_grad():
        expected = model(inputs["x"])
    result = merge_neurons(model, inputs, count_for=lambda g: 2)
    assert "fc1" in result.skipped and not result.groups
    with torch.no_grad():
        assert torch.equal(model(inputs["x"]), expected)  # nothing was touched


def test_recalibration_stops_each_pass_after_the_norms_with_the_same_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).eval()
    batches = [torch.randn(16, 4) + 1.0 for _ in range(3)]
    reference = copy.deepcopy(model)
    norm = reference[1]
    norm.reset_running_stats()
    norm.momentum = None
    norm.train()
    with torch.no_grad():
        for b in batches:
            reference(b)
    tail_calls = []
    model[3].register_forward_hook(lambda *_: tail_calls.append(1))
    recalibrate_norms([model[1]], model, batches, lambda m, b: m(b))
    assert len(tail_calls) == 1  # only the first pass runs to the end
    assert torch.allclose(model[1].running_mean, norm.running_mean)
    assert torch.allclose(model[1].running_var, norm.running_var)
    assert not model[1].training and model[1].momentum == 0.1
