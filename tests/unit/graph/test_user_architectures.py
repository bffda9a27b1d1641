"""Architectures the engine cannot follow are refused before any edit, with the reason."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import StageError
from compressor.graph import StructureGraph


def test_shufflenet_channel_shuffle_is_refused_clearly():
    from torchvision.models import shufflenet_v2_x0_5

    torch.manual_seed(0)
    model = shufflenet_v2_x0_5(num_classes=10).eval()  # 0.35M parameters
    before = {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(StageError, match="channel shuffle") as err:
        StructureGraph(model, {"x": torch.rand(1, 3, 32, 32)})
    assert "ShuffleNetV2" in str(err.value) and "distil" in err.value.hint
    assert {k: v.shape for k, v in model.state_dict().items()} == before  # nothing edited
