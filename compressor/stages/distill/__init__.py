"""The ``distill`` stage: train the (compressed) student to match a teacher.

Everything only distillation uses lives here: ``losses`` (KD, hidden-state matching,
cross-correlation), ``teacher_cache``, ``augment`` (token replacement), ``synthetic``
(data-free and unlabelled inputs), ``self_prune`` (pruning while distilling), ``config`` and
``stage`` (``apply``). Importing this package registers the stage.
"""

# Importing the stage module registers the stage; the stage's public names, as before the
# method had a folder.
from compressor.stages.distill.config import DistillConfig
from compressor.stages.distill.stage import apply

__all__ = ["DistillConfig", "apply"]
