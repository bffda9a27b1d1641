"""Built-in stages. Importing this package registers them (see ``registry``)."""

from compressor.stages import finetune, prune  # noqa: F401  (registration side effects)
