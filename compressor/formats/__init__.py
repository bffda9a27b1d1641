"""Every way a model comes in or goes out.

In: ``state_dict`` (state dicts + factories), ``compacted`` (the compress safetensors format,
with its structure ``manifest``), ``hf/`` (Hugging Face folders), ``loading`` (one entry point
that dispatches over them, ``registry`` holding who loads what). Out: ``export`` (every
requested artifact), ``onnx/`` (verified export, onnxruntime sessions), ``reload`` (read an
output back), ``sizes`` (bytes on disk). Built-in formats register themselves here.
"""

from compressor.formats.hf import load as _hf_load  # noqa: F401  (registers the "hf" loaders)
