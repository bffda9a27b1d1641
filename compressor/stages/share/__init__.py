"""The ``share`` stage: dynamic weight sharing that keeps every tensor dense.

``merge`` (merge-neurons, with ``units``), ``fuse`` (fuse-layers, with ``similarity``) and
``cluster`` (cluster-weights) are the methods; ``config`` their plan options; ``stage`` the
stage (``apply``). Importing this package registers the stage.
"""

# Importing the stage module registers the stage; the stage's public names, as before the
# method had a folder.
from compressor.stages.share.config import (
    ClusterWeightsConfig,
    FuseLayersConfig,
    MergeNeuronsConfig,
)
from compressor.stages.share.stage import apply

__all__ = ["ClusterWeightsConfig", "FuseLayersConfig", "MergeNeuronsConfig", "apply"]
