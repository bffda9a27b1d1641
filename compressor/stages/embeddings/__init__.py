"""The ``embeddings`` stage: shrink token embedding tables.

``vocab`` (vocabulary pruning and tokenizer rewrite), ``factorize`` (low-rank factorisation),
``config`` and ``stage`` (``apply``). Importing this package registers the stage.
"""

# Importing the stage module registers the stage; ``apply`` is its function.
from compressor.stages.embeddings.stage import apply

__all__ = ["apply"]
