"""Turning scores into removal counts: rounding, floors, global ranking, target search."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import StageError
from compressor.graph import HEADS, UnitGroup
from compressor.graph import schedule as sched


def group(
    gid: str, width: int, *, interleave: int = 1, unit_size: int = 1, kind: str = "channels"
) -> UnitGroup:
    return UnitGroup(gid, kind, width, interleave, unit_size, [], (gid,))


def test_kept_units_rounds_to_hardware_friendly_widths():
    assert sched.kept_units(64, 0.5) == 32
    assert sched.kept_units(64, 0.0, step=8) == 64  # nothing asked, nothing rounded
    assert sched.kept_units(64, 0.3, step=8) == 48  # 44.8 kept -> nearest multiple of 8
    assert sched.kept_units(64, 0.99, step=8) == 8  # never below one step
    assert sched.kept_units(64, 0.9, floor=13) == 13
    assert sched.kept_units(64, 0.9, step=8, floor=13) == 16  # floors round up to a step
    assert sched.kept_units(6, 0.5, step=8) == 3  # smaller than a step: no rounding


def test_round_step_counts_channels_not_units():
    assert sched.round_step(group("a", 64), 8) == 8
    # Grouped conv with 4 blocks: every unit is 4 channels, so 2 units make 8 channels.
    assert sched.round_step(group("g", 64, interleave=4), 8) == 2
    assert sched.round_step(group("h", 64, unit_size=16, kind=HEADS), 8) == 1
    assert sched.round_step(group("a", 64), None) == 1


def test_per_layer_counts_apply_the_fraction_to_each_group():
    groups = [group("a", 64), group("b", 10)]
    counts = sched.per_layer_counts(groups, 0.5, {"a": 8}, {})
    assert counts == {"a": 32, "b": 5}
    assert all(n % 8 == 0 for n in [64 - counts["a"]])


def test_global_counts_take_the_lowest_scores_across_groups():
    groups = [group("a", 4), group("b", 4)]
    # Each group is scaled to mean 1: a -> 0.25, 0.5, 0.75, 2.5; b -> 1, 1, 1, 1.
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 10.0]), "b": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    counts = sched.global_counts(groups, scores, 0.5, {}, {"a": 1, "b": 1})
    assert counts == {"a": 3, "b": 1}
    counts = sched.global_counts(groups, scores, 0.75, {}, {"a": 1, "b": 2})
    assert counts == {"a": 3, "b": 2}  # b keeps its floor of 2


def test_lowest_breaks_ties_by_index():
    assert sched.lowest(torch.tensor([3.0, 1.0, 1.0, 0.5]), 2) == [1, 3]


def test_search_fraction_finds_the_smallest_fraction_that_meets_the_goal():
    size = 100

    def counts_for(fraction):
        return {"a": round(fraction * size)}

    def measure(counts):  # "MACs" fall with the square of the width
        return (size - counts["a"]) ** 2

    fraction, counts, value = sched.search_fraction(counts_for, measure, 2500, what="macs")
    assert value <= 2500 and counts == {"a": 50}
    assert 0.49 < fraction <= 0.51
    with pytest.raises(StageError, match="cannot be met"):
        sched.search_fraction(lambda f: {"a": min(90, round(f * size))}, measure, 50, what="macs")
    assert sched.search_fraction(counts_for, measure, 10**6, what="macs")[0] == 0.0
