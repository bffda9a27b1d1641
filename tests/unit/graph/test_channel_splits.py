"""A channel split with one split size whose second half has two consumers (timm's CSPNet:
``xs, xb = x.split(c, dim=1)``; ``xb`` feeds a block and its residual).

Torch-Pruning 1.6 counts one split output per consumer (three outputs of ``c`` channels of a
``2c`` tensor) and sends the second half to channels ``2c..3c-1``: pruning timm's
``cspresnet50`` ended in ``IndexError: index out of range in self``. The engine maps each
consumer to the output it reads.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from compressor.graph import StructureGraph

from .helpers import onnx_max_diff


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c // 2, 1)
        self.conv2 = nn.Conv2d(c // 2, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class TinyCrossStage(nn.Module):
    """timm ``CrossStage`` in miniature: expand, split in two, blocks on one half, concat."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.c = c
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv_exp = nn.Conv2d(c, 2 * c, 1)
        self.blocks = nn.Sequential(_Block(c), _Block(c))
        self.conv_transition_b = nn.Conv2d(c, c, 1)
        self.conv_transition = nn.Conv2d(2 * c, 2 * c, 1)
        self.head = nn.Linear(2 * c, 5)

    def forward(self, x):
        x = self.conv_exp(torch.relu(self.stem(x)))
        xs, xb = x.split(self.c, dim=1)
        xb = self.conv_transition_b(self.blocks(xb))
        out = self.conv_transition(torch.cat([xs, xb], dim=1))
        return self.head(out.mean((2, 3)))


def _model() -> TinyCrossStage:
    torch.manual_seed(0)
    return TinyCrossStage().eval()


def test_second_half_of_the_split_maps_to_its_own_channels():
    graph = StructureGraph(_model(), {"x": torch.rand(1, 3, 16, 16)})
    halves = sorted(
        (
            m.index.tolist()
            for g in graph.groups()
            for m in g.members
            if m.name == "conv_exp" and m.role == "producer"
        ),
        key=min,
    )
    assert halves == [list(range(8)), list(range(8, 16))]
    ids = [g.id for g in graph.groups()]
    assert len(ids) == len(set(ids))  # scores and removals are keyed by id
    assert {"conv_exp[0:8]", "conv_exp[8:16]"} <= set(ids)


def test_pruned_split_computes_the_model_without_the_removed_channels(tmp_path):
    model, x = _model(), torch.rand(2, 3, 16, 16)
    reference = copy.deepcopy(model)
    graph = StructureGraph(model, {"x": x})
    second = graph.group("conv_exp[8:16]")
    units = [1, 4, 6]  # not the first ones: the L2 ranking picks scattered units
    # What removing them must compute: every consumer of the group ignores those channels.
    with torch.no_grad():
        for m in second.consumers():
            cols = m.index[torch.isin(m.root, torch.tensor(units))]
            reference.get_submodule(m.name).weight[:, cols] = 0
    graph.remove(second, units)
    graph.verify()
    assert model.conv_exp.out_channels == 13 and model.conv_transition_b.in_channels == 5
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    assert onnx_max_diff(model, {"x": x}, tmp_path / "m.onnx") < 1e-4


@pytest.mark.xfail(
    strict=True,
    reason="known gap: after the first half is cut, Torch-Pruning's concat offsets for the "
    "split output xs stay as traced, so conv_transition's input is not cut with the second",
)
def test_both_halves_pruned_one_after_the_other(tmp_path):
    # The second removal must see the split as the first one left it (8 + 8 -> 6 + 8).
    model, x = _model(), torch.rand(2, 3, 16, 16)
    graph = StructureGraph(model, {"x": x})
    graph.remove(graph.group("conv_exp[0:8]"), [0, 5])
    graph.remove(graph.group("conv_exp[6:14]"), [2, 7])  # the second half, now at 6..13
    model.c = 6  # the split size the model stores (timm's expand_chs // 2), both halves at 6
    graph.verify()
    assert model.conv_exp.out_channels == 12 and model.conv_transition_b.in_channels == 6
    assert model.blocks[0].conv1.in_channels == 6
    assert onnx_max_diff(model, {"x": x}, tmp_path / "m.onnx") < 1e-4
