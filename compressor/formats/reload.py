"""Reading a compress output back: ``model.safetensors`` -> the compacted ``nn.Module``
(rebuilt without pickle), ``model.onnx`` -> an :class:`OnnxModel`, a Hugging Face folder ->
its model. ``compressor.load`` is this function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compressor.errors import CheckpointError
from compressor.formats.compacted import is_compressed_file, load_compressed
from compressor.formats.hf.folder import load_folder
from compressor.formats.onnx.session import OnnxModel


def load(
    path: Path | str,
    *,
    safe: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    architecture: Any = None,
) -> Any:
    """Load an artifact compress wrote.

    Args:
        path: a compress ``model.safetensors`` (-> the compacted ``nn.Module``, eval mode,
            rebuilt without pickle), a Hugging Face folder compress wrote, or an ``.onnx``
            file (-> ``OnnxModel``: call it with the same named inputs; it returns the first
            output as a torch tensor).
        safe: refuse architecture imports not explicitly allowed.
        device: where the model runs.
        threads: onnxruntime intra-op threads (ONNX only).
        architecture: an ``ArchitectureRef`` to build instead of the one the file names.

    Raises:
        CheckpointError: the file is missing, not a compress artifact, or corrupt.
    """

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist", hint="check the path")
    if path.is_dir() and (path / "config.json").is_file():
        return load_folder(path).to(device)
    if path.suffix.lower() == ".onnx":
        return OnnxModel(path, device=device, threads=threads)
    if path.suffix.lower() == ".safetensors":
        if not is_compressed_file(path):
            raise CheckpointError(
                f"{path} is not a compress model file (no compress metadata)",
                hint="a plain state dict needs its architecture: use compressor.checkpoint."
                "load_model or a plan with model.architecture",
            )
        model = load_compressed(path, safe=safe, architecture=architecture).model
        return model.to(device)
    raise CheckpointError(
        f"{path}: compressor.load reads a compress model.safetensors or an .onnx file, not "
        f"{path.suffix or 'a file without extension'}",
    )
