"""Built-in stages. Importing this package registers them (see ``registry``)."""

# Registration order is the order stages are listed in (schema, errors): distill last.
from compressor.stages import finetune, prune  # noqa: F401, I001  (registration side effects)
from compressor.stages import share  # noqa: F401
from compressor.stages import embeddings  # noqa: F401
from compressor.stages import distill  # noqa: F401
