"""The ``prune`` stage: structured pruning that physically removes units.

``config`` holds the plan's ``prune:`` options; ``apply`` runs them through the graph engine
(``compressor.graph``). Importing this package registers the stage.
"""

from compressor.stages.prune import apply  # noqa: F401  (registers the stage)
