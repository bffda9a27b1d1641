"""Each criterion on hand-built layers whose right answer is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compressor.errors import StageError
from compressor.graph import StructureGraph
from compressor.graph.importance import magnitude, score_groups
from compressor.graph.schedule import lowest

X = {"input": torch.randn(8, 4, generator=torch.Generator().manual_seed(0))}


def mlp(rows: list[list[float]]) -> nn.Sequential:
    """fc1 with the given rows (units), a ReLU, and an fc2 that reads every unit alike."""
    model = nn.Sequential(nn.Linear(4, len(rows)), nn.ReLU(), nn.Linear(len(rows), 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(rows))
        model[0].bias.fill_(1.0)
        model[2].weight.fill_(0.5)
    return model


def fc1_group(model):
    return StructureGraph(model, X).group("0")


def test_l1_keeps_the_units_with_the_largest_weights():
    norms = [3.0, 1.0, 5.0, 0.5, 4.0, 2.0]
    model = mlp([[n, 0, 0, 0] for n in norms])
    scores, _ = score_groups("l1", [fc1_group(model)])
    assert lowest(scores["0"], 3) == [1, 3, 5]  # the three smallest rows go
    assert scores["0"].argmax() == 2


def test_l1_and_l2_disagree_where_they_should():
    # Unit 0 spreads its weight (L1 4, L2 2), unit 1 concentrates it (L1 3, L2 3).
    model = mlp([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    group = fc1_group(model)
    assert lowest(magnitude(group, 1), 1) == [1]
    assert lowest(magnitude(group, 2), 1) == [0]


def test_taylor_scores_the_units_the_loss_depends_on():
    model = mlp([[1.0, 0, 0, 0]] * 6)
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].weight[0, 2] = 1.0  # only unit 2 reaches the loss
    group = fc1_group(model)
    batches = [X["input"][:4], X["input"][4:]]
    scores, _ = score_groups(
        "taylor", [group], model=model, batches=batches, loss_fn=lambda m, b: m(b)[:, 0].sum()
    )
    assert scores["0"].argmax() == 2 and float(scores["0"][[0, 1, 3, 4, 5]].max()) == 0.0
    assert all(p.grad is None for p in model.parameters())  # gradients cleaned up
    with pytest.raises(StageError, match="training data"):
        score_groups("taylor", [group])


def test_activation_scores_mean_absolute_outputs():
    model = mlp([[0.0, 0, 0, 0]] * 6)
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([3.0, -1.0, 0.5, -4.0, 2.0, 0.1]))
    group = fc1_group(model)
    scores, _ = score_groups(
        "activation", [group], model=model, batches=[X["input"]], run=lambda m, b: m(b)
    )
    assert lowest(scores["0"], 3) == [1, 2, 5]  # |-1|, 0.5 and 0.1 are the weakest outputs


def test_bn_scale_reads_gamma_and_falls_back_without_batch_norm():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 8),
        nn.ReLU(),
        nn.Linear(8, 2),
    )
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.1, -2.0, 1.0, 0.01]))
    graph = StructureGraph(model, {"input": torch.randn(2, 1, 6, 6)})
    groups = [graph.group("0"), graph.group("4")]
    scores, notes = score_groups("bn-scale", groups)
    assert lowest(scores["0"], 2) == [0, 3]
    assert notes == ["4: no batch norm in the group, scored by l1 instead"]
    assert torch.allclose(scores["4"], magnitude(graph.group("4"), 1))


def test_random_is_seeded():
    group = fc1_group(mlp([[1.0, 0, 0, 0]] * 6))
    a, _ = score_groups("random", [group], seed=1)
    b, _ = score_groups("random", [group], seed=1)
    c, _ = score_groups("random", [group], seed=2)
    assert torch.equal(a["0"], b["0"]) and not torch.equal(a["0"], c["0"])
