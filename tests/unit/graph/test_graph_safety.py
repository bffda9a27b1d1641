"""What the engine refuses or protects: layers it cannot edit, ignored modules, the model's
inputs and outputs; and the records, ties and modes it must leave right."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.errors import StageError
from compressor.graph import StructureGraph, count_prunable_groups
from sample_models.digits_cnn.model import build as build_cnn
from tests.unit.graph.test_graph_cases import MHABlock

DIGITS = {"x": torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))}


class Scale(nn.Module):
    """A custom per-channel layer the engine has no editor for."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x):
        return x * self.gamma[:, None, None]


class WithCustomLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.scale = Scale(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv2(F.relu(self.scale(self.conv(x)))).mean((2, 3)))


def test_per_channel_free_parameter_is_pruned_with_its_group():
    # A per-channel scale no layer owns is cut along its channel axis, as Torch-Pruning
    # does (issue 15); layouts the engine cannot cut are still refused, see
    # tests/unit/graph/test_free_parameters.py.
    model = WithCustomLayer()
    gamma = model.scale.gamma.detach().clone()
    graph = StructureGraph(model, DIGITS)
    group = graph.group("conv")
    assert group.unsupported == () and group.blocked is None
    graph.remove(group, [0, 1])
    graph.verify()
    assert model.conv.out_channels == 6 and torch.equal(model.scale.gamma.detach(), gamma[2:])


def test_ignored_custom_layer_blocks_its_group_and_stays_intact():
    model = WithCustomLayer()
    gamma = model.scale.gamma.detach().clone()
    graph = StructureGraph(model, DIGITS, ignore=["scale"])
    assert "ignored module 'scale" in graph.group("conv").blocked
    assert [g.id for g in graph.prunable()] == ["conv2"]
    graph.remove(graph.group("conv2"), [0])
    assert torch.equal(model.scale.gamma, gamma) and model.conv.out_channels == 8


def test_lstm_in_a_group_is_unsupported():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 8)
            self.rnn = nn.LSTM(8, 6, batch_first=True)
            self.out = nn.Linear(6, 3)

        def forward(self, x):
            return self.out(self.rnn(self.proj(x))[0])

    graph = StructureGraph(Tagger(), {"x": torch.randn(2, 5, 4)})
    assert any("LSTM" in u for u in graph.group("proj").unsupported)
    with pytest.raises(StageError, match="LSTM"):
        graph.remove(graph.group("proj"), [0])


def test_ignored_modules_keep_every_tensor():
    model = build_cnn()
    before = copy.deepcopy(model.block1.state_dict())
    fc2 = copy.deepcopy(model.fc2.state_dict())
    graph = StructureGraph(model, DIGITS, ignore=["block1", "re:f.2"])
    prunable = {g.id for g in graph.prunable()}
    # The 64-channel residual group runs through block1, fc1's outputs feed fc2 (a regex).
    assert prunable == {"block2.conv1", "down.0"}
    for group in graph.prunable():
        graph.remove(group, range(group.size // 2))
    graph.verify()
    assert model.block2.conv1.out_channels == 64 and model.fc1.in_features == 64
    after = model.block1.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(fc2[k], v) for k, v in model.fc2.state_dict().items())
    assert model.fc1.out_features == 128


def test_inputs_and_outputs_keep_their_shapes():
    class InputResidual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 6)
            self.fc2 = nn.Linear(6, 3)
            self.dw = nn.Conv1d(6, 6, 3, padding=1, groups=6)

        def forward(self, x):
            h = x + self.fc1(x)  # a residual from the input: its width is the input's
            return self.fc2(self.dw(h.transpose(1, 2)).mean(-1))

    graph = StructureGraph(InputResidual(), {"x": torch.randn(2, 4, 6)})
    assert "input" in graph.group("fc1").blocked
    assert "output" in graph.group("fc2").blocked
    assert graph.prunable() == []
    with pytest.raises(StageError, match="cannot be pruned"):
        graph.remove(graph.group("fc2"), [0])


def test_history_records_every_module_and_kept_index():
    model = build_cnn()
    graph = StructureGraph(model, DIGITS)
    records = graph.remove(graph.group("block1.conv1"), [0, 5, 63])
    kept = [i for i in range(64) if i not in (0, 5, 63)]
    assert records == graph.history
    assert [(r["module"], r["dim"]) for r in records] == [
        ("block1.conv1", "out"),
        ("block1.bn1", "out"),
        ("block1.conv2", "in"),
    ]
    assert all(r["kept"] == kept and r["size_before"] == 64 for r in records)
    assert all(r["group"] == "block1.conv1" and r["unit"] == "channels" for r in records)


def test_remove_refuses_empty_groups_and_stale_groups():
    model = build_cnn()
    graph = StructureGraph(model, DIGITS)
    group = graph.group("fc1")
    with pytest.raises(StageError, match="every unit"):
        graph.remove(group, range(128))
    assert graph.remove(group, []) == []
    graph.remove(group, [0])
    with pytest.raises(RuntimeError, match="stale"):
        graph.remove(group, [1])  # described before the edit: widths changed since
    assert graph.group("fc1").size == 127


def test_tracing_restores_modes_and_frozen_weights():
    model = build_cnn().train()
    model.stem.requires_grad_(False)
    StructureGraph(model, DIGITS)
    assert model.training and not model.stem[0].weight.requires_grad
    assert model.block1.conv1.weight.requires_grad


def test_counting_groups_leaves_the_model_alone():
    model = MHABlock()
    assert count_prunable_groups(model, {"x": torch.randn(1, 3, 5)}) == 2  # heads + ffn
    assert type(model.attn) is nn.MultiheadAttention
    assert count_prunable_groups(build_cnn(), DIGITS) == 5
