"""The ``prune`` stage: structured pruning that physically removes units.

``config`` holds the plan's ``prune:`` options; ``apply`` runs them through the graph engine
(``compressor.graph``). Importing this package registers the stage.
"""

# Importing the stage module registers the stage; ``apply`` is its function.
from compressor.stages.prune.stage import apply

__all__ = ["apply"]
