"""The ``distill`` stage: train the (compressed) student to match a teacher.

Everything only distillation uses lives here: ``losses`` (KD, hidden-state matching,
cross-correlation), ``teacher_cache``, ``augment`` (token replacement), ``synthetic``
(data-free and unlabelled inputs), ``self_prune`` (pruning while distilling), ``config`` and
``apply``. Importing this package registers the stage.
"""

from compressor.stages.distill import apply  # noqa: F401  (registers the stage)
