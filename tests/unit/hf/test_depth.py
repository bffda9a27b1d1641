"""Depth pruning: finding block stacks, block influence, removing blocks with the model kept
consistent (layer indices, layer counts, per-layer config lists), the ``layers`` knob."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

from compressor.errors import StageError
from compressor.formats.manifest import apply_manifest, diff, snapshot
from compressor.graph.depth import (
    block_influence,
    choose_blocks,
    drop_blocks,
    find_block_stacks,
    sync_configs,
)
from compressor.stages import prune
from compressor.stages.prune.config import PruneConfig
from tests.unit.hf.helpers import hf_context

transformers = pytest.importorskip("transformers")


class Residual(nn.Module):
    def __init__(self, dim: int, layer_idx: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.layer_idx = layer_idx

    def forward(self, x):
        return x + self.fc(x)


class Stack(nn.Module):
    """Residual blocks in a ModuleList, a layer count on the parent and an HF-style config."""

    def __init__(self, depth: int = 4, dim: int = 8):
        super().__init__()
        kinds = ("full_attention", "sliding_attention")
        self.config = transformers.PretrainedConfig(
            num_hidden_layers=depth, layer_types=[kinds[i % 2] for i in range(depth)]
        )
        self.num_layers = depth
        self.blocks = nn.ModuleList(Residual(dim, i) for i in range(depth))
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def silent(model: Stack, index: int) -> Stack:
    with torch.no_grad():  # the block adds nothing to its input: influence 0
        model.blocks[index].fc.weight.zero_()
        model.blocks[index].fc.bias.zero_()
    return model


def test_block_influence_ranks_a_block_that_adds_nothing_lowest():
    torch.manual_seed(0)
    model = silent(Stack(), 2)
    stacks = find_block_stacks(model)
    assert [s.name for s in stacks] == ["blocks"]
    scores = block_influence(model, stacks, [{"x": torch.randn(3, 5, 8)}])
    assert set(scores) == {f"blocks.{i}" for i in range(4)}
    assert scores["blocks.2"] == pytest.approx(0.0, abs=1e-6)
    assert all(scores[f"blocks.{i}"] > 1e-3 for i in (0, 1, 3))
    assert choose_blocks(stacks, scores, 1) == {"blocks": [2]}
    assert choose_blocks(stacks, scores, 1, ignore=["blocks.2"]) != {"blocks": [2]}


def test_blocks_that_change_their_input_shape_are_never_chosen():
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3))
    stacks = find_block_stacks(model)
    scores = block_influence(model, stacks, [{"input": torch.randn(2, 4)}])
    assert scores["0"] == float("inf") and scores["2"] == float("inf")
    assert choose_blocks(stacks, scores, 1) == {"": [1]}
    with pytest.raises(StageError, match="only 1 may go"):
        choose_blocks(stacks, scores, 2)


def test_dropping_blocks_keeps_indices_counts_and_config_lists_true_and_replays():
    torch.manual_seed(0)
    model = Stack()
    fresh = copy.deepcopy(model)
    before = snapshot(model)
    x = torch.randn(2, 8)
    records = drop_blocks(model, {"blocks": [0, 2]})
    assert records == [{"module": "blocks", "kept": [1, 3], "removed": [0, 2], "size_before": 4}]
    assert [b.layer_idx for b in model.blocks] == [0, 1]
    assert model.num_layers == 2
    assert model.config.num_hidden_layers == 2
    assert model.config.layer_types == ["sliding_attention"] * 2
    model.config.validate()  # transformers' own consistency checks still pass
    want = model(x)

    manifest = diff(before, model)
    assert {"op": "keep_items", "module": "blocks", "indices": [1, 3]} in manifest
    apply_manifest(fresh, manifest)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), want)
    assert [b.layer_idx for b in fresh.blocks] == [0, 1] and fresh.num_layers == 2
    sync_configs(fresh, manifest)  # the config is not a module: replayed separately
    assert fresh.config.num_hidden_layers == 2
    assert fresh.config.layer_types == ["sliding_attention"] * 2

    with pytest.raises(StageError, match="every block"):
        drop_blocks(model, {"blocks": [0, 1]})


def test_layers_knob_takes_a_count_or_a_fraction():
    assert PruneConfig(layers=2).layers == 2
    assert PruneConfig(layers=0.25).layers == 0.25
    assert PruneConfig(layers=1, heads=0.5).prunes_width
    assert not PruneConfig(layers=1).prunes_width
    for bad, message in ((0, "at least 1"), (1.5, "fraction"), (True, "count"), ("2", "count")):
        with pytest.raises(ValidationError, match=message):
            PruneConfig(layers=bad)
    assert PruneConfig(hidden=0.25).hidden_prunable


def test_prune_stage_drops_the_gpt2_block_that_adds_nothing(tmp_path):
    ctx, model = hf_context(tmp_path, "gpt2", layers=3)
    h = model.model.h
    with torch.no_grad():  # pre-LN block 1 with zero output projections is the identity
        for proj in (h[1].attn.c_proj, h[1].mlp.c_proj):
            proj.weight.zero_()
            proj.bias.zero_()
    inputs = ctx.example_inputs()
    with torch.no_grad():
        want = model(**inputs)
    ctx.stage_report = {}
    prune.apply(model, PruneConfig(layers=0.34), ctx)  # a third of three blocks: one
    step = ctx.stage_report["steps"][0]
    assert step["blocks"]["removed"] == ["model.h.1"]
    assert step["removed"] == {"model.h": 1}  # what callers check to see the model changed
    assert len(model.model.h) == 2 and model.model.config.n_layer == 2
    assert [b.attn.layer_idx for b in model.model.h] == [0, 1]
    with torch.no_grad():
        assert torch.allclose(model(**inputs), want, atol=1e-5)  # nothing was lost
    (record,) = [r for r in ctx.history if r.get("unit") == "blocks"]
    assert record["kept"] == [0, 2] and record["dim"] == "items"
