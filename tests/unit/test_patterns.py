"""Module-name patterns mean the same in every place a plan names modules."""

from __future__ import annotations

import pytest
import torch.nn as nn

from compressor.errors import StageError
from compressor.patterns import matches, resolve_modules
from compressor.training.aligned import AlignedConfig, AlignedRegularizer


class Encoded(nn.Module):
    """An encoder of two linear layers and a head outside it."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.encoder(x))


def test_an_exact_name_selects_the_module_and_what_is_inside_it():
    assert matches("encoder", "encoder") and matches("encoder", "encoder.0")
    assert not matches("encoder", "encoderx.0") and not matches("encoder", "head")
    assert matches(r"re:encoder\.\d", "encoder.2") and not matches(r"re:encoder\.\d", "head")


def test_aligned_modules_cover_the_children_of_a_named_module_like_prune_ignore():
    model = Encoded()
    info = AlignedRegularizer(AlignedConfig(modules=["encoder"]), Encoded()).attach(model)
    # encoder.0 and encoder.2 are regularised; the head, outside the encoder, is not.
    assert info["aligned_modules"] == 2
    assert AlignedRegularizer(AlignedConfig(), Encoded()).attach(model)["aligned_modules"] == 3


def test_resolve_modules_gives_the_named_modules_and_names_close_ones_when_none_match():
    model = Encoded()
    assert resolve_modules(model, r"re:encoder\.\d", "taps") == [
        "encoder.0",
        "encoder.1",
        "encoder.2",
    ]
    assert resolve_modules(model, "head", "taps") == ["head"]
    with pytest.raises(StageError, match=r"no module named 'encoder\.9'") as err:
        resolve_modules(model, "encoder.9", "taps")
    assert "similar names" in err.value.hint
