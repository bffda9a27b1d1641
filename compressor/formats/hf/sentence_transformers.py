"""The sentence-transformers files of an embedding model's Hugging Face folder.

    write_sentence_transformers(folder, config, {"pooling": "mean", "normalize": True}, source)

writes what ``SentenceTransformer(folder)`` reads (``trust_remote_code=True`` where the folder
carries custom modeling code), stated from the compressed model itself, so its embeddings are
the compressed model's (``HFModel`` with task ``embedding``):

* ``modules.json``: the Transformer module (the folder root), ``1_Pooling``, and
  ``2_Normalize`` when the model normalises;
* ``1_Pooling/config.json``: the pooling mode (``cls`` / ``mean`` / ``max``) and the width;
* ``sentence_bert_config.json``: ``max_seq_length`` and ``do_lower_case`` (the source's, else
  the longest input the tokenizer and the position table allow);
* ``config_sentence_transformers.json``: the source's (prompts, similarity function), else a
  minimal one.

The files use the layout every sentence-transformers release since 2.0 reads (the type names
``sentence_transformers.models.*`` that 6.x still resolves). Modules of the source beyond
pooling and normalisation (a Dense projection, say) are not part of the compressed model and
are left out, with a note, so the folder gives the compressed model's embeddings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

MODULES_FILE = "modules.json"
POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
ST_CONFIG = "sentence_bert_config.json"
ST_PACKAGE_CONFIG = "config_sentence_transformers.json"
DEFAULT_MAX_SEQ = 512
# Tokenizers without a real limit say a huge model_max_length (transformers' VERY_LARGE_INTEGER).
_NO_LIMIT = 10**6
_KEPT_TYPES = ("Transformer", "Pooling", "Normalize")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def pooling_config(mode: str, width: int) -> dict[str, Any]:
    """``1_Pooling/config.json`` for one of compress's pooling modes."""
    return {
        "word_embedding_dimension": width,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
    }


def modules(normalize: bool) -> list[dict[str, Any]]:
    """``modules.json``: Transformer, Pooling and (when normalising) Normalize."""
    entries = [
        ("", "sentence_transformers.models.Transformer"),
        (POOLING_DIR, "sentence_transformers.models.Pooling"),
    ]
    if normalize:
        entries.append((NORMALIZE_DIR, "sentence_transformers.models.Normalize"))
    return [
        {"idx": i, "name": str(i), "path": path, "type": kind}
        for i, (path, kind) in enumerate(entries)
    ]


def _max_seq_length(config: Any, source: Path | None) -> int:
    positions = getattr(config, "max_position_embeddings", None)
    tokenizer = _read_json(source / "tokenizer_config.json") if source else None
    limit = tokenizer.get("model_max_length") if isinstance(tokenizer, dict) else None
    options = [v for v in (positions, limit) if isinstance(v, int) and 0 < v < _NO_LIMIT]
    return min(options) if options else DEFAULT_MAX_SEQ


def _dropped_modules(source: Path | None) -> list[str]:
    entries = _read_json(source / MODULES_FILE) if source else None
    if not isinstance(entries, list):
        return []
    return [
        str(e.get("type"))
        for e in entries
        if isinstance(e, dict) and not str(e.get("type", "")).endswith(_KEPT_TYPES)
    ]


def write_sentence_transformers(
    folder: Path | str, config: Any, settings: dict[str, Any], source: Path | str | None = None
) -> list[str]:
    """Write the sentence-transformers files of an embedding model into ``folder``.

    Args:
        folder: the Hugging Face folder (config.json and weights are written beside).
        config: the transformers config of the folder's model (its hidden size is the
            embedding width).
        settings: ``pooling`` (``mean`` / ``cls`` / ``max``) and ``normalize``.
        source: the folder the model came from, for its sentence-transformers settings.

    Returns:
        Notes for the report (modules of the source that were left out).
    """
    folder = Path(folder)
    source = Path(source) if source is not None else None
    if source is not None and not source.is_dir():
        source = None
    pooling, normalize = settings.get("pooling", "mean"), bool(settings.get("normalize"))
    for stale in (POOLING_DIR, NORMALIZE_DIR):  # copies of the source's: stated afresh below
        shutil.rmtree(folder / stale, ignore_errors=True)
    _write_json(folder / MODULES_FILE, modules(normalize))
    _write_json(folder / POOLING_DIR / "config.json", pooling_config(pooling, config.hidden_size))
    if normalize:
        # Normalize has no settings; the folder exists because modules.json names it.
        (folder / NORMALIZE_DIR).mkdir(exist_ok=True)
    st_config = _read_json(source / ST_CONFIG) if source else None
    st_config = st_config if isinstance(st_config, dict) else {}
    _write_json(
        folder / ST_CONFIG,
        {
            "max_seq_length": st_config.get("max_seq_length") or _max_seq_length(config, source),
            "do_lower_case": bool(st_config.get("do_lower_case", False)),
        },
    )
    package = _read_json(source / ST_PACKAGE_CONFIG) if source else None
    if not isinstance(package, dict):
        package = {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    _write_json(folder / ST_PACKAGE_CONFIG, package)
    dropped = _dropped_modules(source)
    if dropped:
        return [
            f"sentence-transformers modules {dropped} of the source are not part of the "
            "compressed model and were left out of modules.json"
        ]
    return []
