"""compress: make a saved PyTorch checkpoint physically smaller and faster, and measure it."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load a compress output: ``model.safetensors`` -> the compacted ``nn.Module`` (rebuilt
    without pickle), ``model.onnx`` -> a callable onnxruntime model taking the same inputs.
    See :func:`compressor.export.load` for the options."""
    from compressor.export import load as _load

    return _load(path, **kwargs)
