"""The ``share`` stage: dynamic weight sharing that keeps every tensor dense.

``merge`` (merge-neurons, with ``units``), ``fuse`` (fuse-layers, with ``similarity``) and
``cluster`` (cluster-weights) are the methods; ``config`` their plan options; ``stage`` the
stage (``apply``). Importing this package registers the stage.
"""

# Importing the stage module registers the stage; ``apply`` is its function.
from compressor.stages.share.stage import apply

__all__ = ["apply"]
