"""The ``embeddings`` stage: shrink token embedding tables.

``vocab`` (vocabulary pruning and tokenizer rewrite), ``factorize`` (low-rank factorisation),
``config`` and ``stage`` (``apply``). Importing this package registers the stage.
"""

# Importing the stage module registers the stage; the stage's public names, as before the
# method had a folder.
from compressor.stages.embeddings.config import EmbeddingsConfig, FactorizeConfig, VocabConfig
from compressor.stages.embeddings.stage import apply

__all__ = ["EmbeddingsConfig", "FactorizeConfig", "VocabConfig", "apply"]
