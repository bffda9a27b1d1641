"""compress: make a saved PyTorch checkpoint physically smaller and faster, and measure it.

The package root is the public facade: ``compressor.load`` (read a compress output back).
It imports nothing at import time, so that ``import compressor.errors`` does not load every
layer; the names below resolve on first use (PEP 562).
"""

from compressor.version import __version__

__all__ = ["__version__", "load"]


def load(path, **kwargs):
    """Load a compress output: ``model.safetensors`` -> the compacted ``nn.Module`` (rebuilt
    without pickle), ``model.onnx`` -> a callable onnxruntime model taking the same inputs, a
    Hugging Face folder compress wrote -> its model. See
    :func:`compressor.formats.reload.load` for the options."""
    # Deferred: the facade must not import the formats layer (and torch) at package import.
    from compressor.formats.reload import load as _load

    return _load(path, **kwargs)
