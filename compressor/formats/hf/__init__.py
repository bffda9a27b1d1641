"""Hugging Face model folders, offline through transformers (extra ``hf``).

``paths`` (``package:`` and folder paths), ``model`` (the ``HFModel`` wrapper: task, pooling),
``tokenizer`` (the model's tokenizer, written beside it), ``load`` (a folder -> model, and
the "hf" architecture builder), ``save`` (a compacted model -> a folder), ``folder`` (a folder
compress wrote, read back). The common entry points are re-exported here.
"""

from compressor.formats.hf.folder import from_pretrained, load_folder, read_config
from compressor.formats.hf.load import build_hf, load_hf_folder
from compressor.formats.hf.model import HFModel, input_embedding, pool
from compressor.formats.hf.paths import hf_folder_problem, resolve_hf_path, resolve_package_path
from compressor.formats.hf.save import save_hf_folder
from compressor.formats.hf.tokenizer import model_tokenizer, tokenizer_text, write_tokenizer_files

__all__ = [
    "HFModel",
    "build_hf",
    "from_pretrained",
    "hf_folder_problem",
    "input_embedding",
    "load_folder",
    "load_hf_folder",
    "model_tokenizer",
    "pool",
    "read_config",
    "resolve_hf_path",
    "resolve_package_path",
    "save_hf_folder",
    "tokenizer_text",
    "write_tokenizer_files",
]
