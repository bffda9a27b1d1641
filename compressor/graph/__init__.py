"""The one structural-edit engine every shape-changing stage uses.

    graph = StructureGraph(model, example_inputs, ignore=["head"])
    for group in graph.prunable():          # coupled channel groups and attention-head groups
        ...                                 # score units (compressor.graph.importance), choose some
    graph.remove(group, units)              # physically smaller tensors, attributes updated
    graph.verify()                          # outputs keep their shapes
    graph.history                           # [{module, dim, kept, size_before, ...}]

``compressor.graph.schedule`` turns scores into how many units each group loses (per layer or
global, ``round_to``, parameter/MAC targets); ``compressor.graph.depth`` removes whole blocks
(transformer layers). Hugging Face BERT, RoBERTa, DistilBERT, ViT and GPT-2 (whose ``Conv1D``
layers store weights transposed: ``compressor.graph.layers``) are covered. Only this package
imports ``torch_pruning``.
"""

import sys

# Torch-Pruning imports timm, when installed, only for its own FLOP counter (compress counts
# MACs with torch's), and timm imports torchvision: about 5 s of every command's start-up.
# Importing it with timm hidden skips that; a timm model the user loads later imports timm
# as usual (and one already imported stays as it is).
if "torch_pruning" not in sys.modules and "timm" not in sys.modules:
    sys.modules["timm"] = None  # type: ignore[assignment]  # makes `import timm` fail fast
    try:
        import torch_pruning  # noqa: F401
    finally:
        del sys.modules["timm"]

from compressor.graph.engine import StructureGraph
from compressor.graph.groups import (
    CHANNELS,
    CONSUMER,
    FFN,
    HEADS,
    HIDDEN,
    PASSTHROUGH,
    PRODUCER,
    Member,
    UnitGroup,
)
from compressor.graph.probe import WidthProbe, count_prunable_groups
from compressor.graph.support import check_supported, flatten_tensors
from compressor.patterns import check_amounts, check_pattern, first_match, matches

__all__ = [
    "CHANNELS",
    "CONSUMER",
    "FFN",
    "HEADS",
    "HIDDEN",
    "PASSTHROUGH",
    "PRODUCER",
    "Member",
    "StructureGraph",
    "UnitGroup",
    "WidthProbe",
    "check_amounts",
    "check_pattern",
    "check_supported",
    "count_prunable_groups",
    "first_match",
    "flatten_tensors",
    "matches",
]
