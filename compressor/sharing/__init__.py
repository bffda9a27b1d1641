"""Weight sharing that keeps every tensor dense (the ``share`` stage's methods).

* :mod:`compressor.sharing.merge` (with :mod:`~compressor.sharing.units`): merge-neurons,
  alike units folded into one and removed through the graph engine;
* :mod:`compressor.sharing.fuse` (with :mod:`~compressor.sharing.similarity`): fuse-layers,
  alike layers tied to one shared parameter;
* :mod:`compressor.sharing.cluster`: cluster-weights, a k-entry codebook per tensor.
"""
