"""The ``share`` stage: dynamic weight sharing that keeps every tensor dense.

``merge`` (merge-neurons, with ``units``), ``fuse`` (fuse-layers, with ``similarity``) and
``cluster`` (cluster-weights) are the methods; ``config`` their plan options; ``apply`` the
stage. Importing this package registers the stage.
"""

from compressor.stages.share import apply  # noqa: F401  (registers the stage)
