"""The ``embeddings`` stage: shrink token embedding tables.

``vocab`` (vocabulary pruning and tokenizer rewrite), ``factorize`` (low-rank factorisation),
``config`` and ``apply``. Importing this package registers the stage.
"""

from compressor.stages.embeddings import apply  # noqa: F401  (registers the stage)
