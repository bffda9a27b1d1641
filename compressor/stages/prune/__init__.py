"""The ``prune`` stage: structured pruning that physically removes units.

``config`` holds the plan's ``prune:`` options; ``apply`` runs them through the graph engine
(``compressor.graph``). Importing this package registers the stage.
"""

# Importing the stage module registers the stage; the stage's public names, as before the
# method had a folder.
from compressor.stages.prune.config import PruneConfig, PruneTarget
from compressor.stages.prune.stage import PruneState, apply, prune_once, prune_step

__all__ = ["PruneConfig", "PruneState", "PruneTarget", "apply", "prune_once", "prune_step"]
