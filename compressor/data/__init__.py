"""Data: ``sources`` (the plan's ``data:`` strings: builtins, tensor/text files, callables),
``text`` (English corpora that ship with Python), ``batches`` (named-input datasets and
loaders), ``bundle`` (a plan's data as one object), ``padding`` (padding-aware token
batches), ``tokenization`` (tokenizer callables)."""
