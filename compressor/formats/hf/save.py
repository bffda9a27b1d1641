"""A compacted Hugging Face model saved as a Hugging Face model folder, and read back.

    save_hf_folder(model, "out/hf", ctx)       # config.json + model.safetensors + tokenizer
    load_folder("out/hf")                       # -> HFModel, exactly the compacted model
    from_pretrained("out/hf")                   # -> the transformers model alone

The folder is what ``save_pretrained`` would write (``config.json``, ``model.safetensors``
with transformers' key names, the tokenizer / image-processor files of the source folder),
with the config brought up to date where a config can say it: the layer count after depth
pruning, the FFN width (``intermediate_size``, ``hidden_dim``, ``n_inner``...) when every
layer has the same one, the vocabulary size, the hidden size, and the head count when the
architecture reads a ``head_dim`` from its config (ViT). Then plain
``transformers.AutoModel.from_pretrained(folder)`` loads the compacted model.

What a transformers config cannot say: different widths or head counts per layer, and fewer
heads with the hidden size kept in BERT, RoBERTa, DistilBERT or GPT-2 (they compute the head
size as hidden size / head count, and transformers 5 has no ``pruned_heads``). For those,
``config.json`` holds a ``compress`` field: ``layers`` (per-layer head count, head size and
FFN width, for people and tools) and ``manifest`` (compress's structure ops, relative to the
model the config builds), and ``plain_transformers: false``; :func:`from_pretrained` builds
the model from the config, replays the manifest and loads the tensors strictly. Such a folder
also carries custom code (``portable``: ``modeling_compressed.py`` and ``auto_map``), so
``AutoModel.from_pretrained(folder, trust_remote_code=True)`` loads it without compress;
without ``trust_remote_code`` transformers refuses it (the tensor shapes differ) rather than
loading a wrong model. An embedding model's folder also has the sentence-transformers layout
(``sentence_transformers``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Through the module: replacing safetensors' functions (tests simulating a full disk)
# must reach every writer.
import safetensors.torch
import torch
import torch.nn as nn

from compressor.errors import CheckpointError, ExportError
from compressor.formats.compacted import dedupe_state
from compressor.formats.hf.model import require_transformers
from compressor.formats.hf.portable import PortableCode, portable_code
from compressor.formats.hf.sentence_transformers import write_sentence_transformers
from compressor.formats.hf.tokenizer import write_tokenizer_files
from compressor.formats.manifest import diff, snapshot
from compressor.graph.attention import find_attention
from compressor.graph.depth import find_block_stacks
from compressor.graph.layers import is_linear, out_features

FORMAT_VERSION = 1


WEIGHTS_NAME = "model.safetensors"


# Config fields that set the FFN width of every layer, by architecture family.
FFN_KEYS = ("intermediate_size", "hidden_dim", "n_inner", "ffn_dim", "d_ff")


# Files of a source folder that belong to the tokenizer / processor / sentence-transformers.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "preprocessor_config.json",
    "processor_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)


def _unwrap(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """The transformers model inside an ``HFModel`` (or the model itself) and its wrapper
    settings."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "config") and hasattr(model, "task"):
        settings = {"task": model.task, "pooling": model.pooling, "normalize": model.normalize}
        return inner, settings
    if hasattr(model, "config") and hasattr(model, "base_model"):
        return model, {"task": "base", "pooling": "mean", "normalize": False}
    raise ExportError(
        f"a Hugging Face folder needs a transformers model, not a {type(model).__name__}",
        hint="remove 'hf' from export.formats",
    )


def _config_dict(config: Any) -> dict[str, Any]:
    data = json.loads(config.to_json_string(use_diff=False))
    data.pop("compress", None)  # a folder written earlier by compress: described afresh below
    data.pop("auto_map", None)  # its custom code too (compress never runs a folder's code)
    return data


def type_config(data: dict[str, Any]) -> Any:
    """A transformers config object from a ``config.json`` dict (no remote code)."""
    transformers = require_transformers()
    data = {k: v for k, v in data.items() if k != "compress"}
    model_type = data.pop("model_type", None)
    if not model_type:
        raise CheckpointError("config.json has no model_type")
    return transformers.AutoConfig.for_model(model_type, **data)


def relative_manifest(fresh: nn.Module, live: nn.Module) -> list[dict[str, Any]]:
    """Structure ops that turn ``fresh`` (built from a config) into ``live``."""
    # diff() compares a model with a snapshot of itself; a common parent makes the two
    # models the "same" root, so modules are matched by name.
    holder = nn.Module()
    holder.m = fresh
    before = snapshot(holder)
    holder.m = live
    ops = diff(before, holder)
    for op in ops:
        name = op["module"]
        op["module"] = name[2:] if name.startswith("m.") else ""
    return ops


def layer_stack(model: nn.Module) -> nn.Module | None:
    """The model's one stack of transformer layers (blocks holding attention), if it has one."""
    stacks = [
        s
        for s in find_block_stacks(model, min_blocks=1)
        if len(s.container) and find_attention(s.container[0])
    ]
    return stacks[0].container if len(stacks) == 1 else None


def _ffn_fields(fresh: nn.Module, data: dict[str, Any]) -> dict[str, str]:
    """``{config key: module name inside a block}`` for the FFN width keys the config has:
    the Linear of the first block of the fresh model whose output width is the key's value."""
    stack = layer_stack(fresh)
    if stack is None:
        return {}
    block = stack[0]
    found = {}
    for key in FFN_KEYS:
        if key not in data:
            continue
        value = data[key]
        if value is None and key == "n_inner":  # GPT-2: None means 4 x hidden
            value = 4 * int(data.get("n_embd", data.get("hidden_size", 0)))
        names = [n for n, m in block.named_modules() if is_linear(m) and out_features(m) == value]
        if len(names) == 1:
            found[key] = names[0]
    return found


def layer_summary(live: nn.Module, ffn_names: dict[str, str]) -> list[dict[str, Any]]:
    """Per block: head count, head size and FFN width (what a config cannot hold per layer)."""
    stack = layer_stack(live)
    summary = []
    for block in stack if stack is not None else []:
        entry: dict[str, Any] = {}
        refs = {id(r): r for r in find_attention(block).values()}
        if len(refs) == 1:
            (ref,) = refs.values()
            entry.update(heads=ref.num_heads, head_dim=ref.head_dim)
        for name in ffn_names.values():
            entry["ffn"] = out_features(block.get_submodule(name))
        summary.append(entry)
    return summary


def _uniform(values: list[Any]) -> Any:
    return values[0] if values and all(v == values[0] for v in values) else None


def describe_config(live: nn.Module) -> tuple[dict[str, Any], list[dict[str, Any]], list]:
    """The config.json dict that best describes ``live``, its per-layer summary and the
    structure ops still needed on top of it (empty: plain transformers builds ``live``)."""
    cls = type(live)
    data = _config_dict(live.config)
    original = build_from_config_dict(cls, data, meta=True)
    ffn_names = _ffn_fields(original, data)
    stack = layer_stack(live)
    layers_key = _first_key(data, ("num_hidden_layers", "n_layer", "n_layers"))
    original_stack = layer_stack(original)
    # Only where the stack is the layer count: ALBERT runs one shared layer group
    # num_hidden_layers times, so its stack's length is inner_group_num.
    if (
        stack is not None
        and layers_key
        and original_stack is not None
        and len(original_stack) == data[layers_key]
    ):
        data[layers_key] = len(stack)
    summary = layer_summary(live, ffn_names)
    for key in ffn_names:
        width = _uniform([entry.get("ffn") for entry in summary])
        if width is not None:
            data[key] = width
    embeddings = live.get_input_embeddings() if hasattr(live, "get_input_embeddings") else None
    if isinstance(embeddings, nn.Embedding):
        if "vocab_size" in data:
            data["vocab_size"] = embeddings.num_embeddings
        # ALBERT and ELECTRA factorise the table (embedding_size, projected up to the hidden
        # size): its width is the embedding size there, not the hidden size.
        hidden_key = _first_key(data, ("embedding_size", "hidden_size", "n_embd", "dim"))
        if hidden_key:
            data[hidden_key] = embeddings.embedding_dim
    candidates = [data]
    heads = _uniform([entry.get("heads") for entry in summary])
    head_dim = _uniform([entry.get("head_dim") for entry in summary])
    for key in ("num_attention_heads", "n_heads", "n_head"):
        if heads is not None and head_dim is not None and key in data and data[key] != heads:
            candidates.append({**data, key: heads, "head_dim": head_dim})
    best = None
    for candidate in candidates:  # the first (unchanged head count) wins ties
        ops = relative_manifest(build_from_config_dict(cls, candidate, meta=True), live)
        if best is None or len(ops) < len(best[1]):
            best = (candidate, ops)
    return best[0], summary, best[1]


def _first_key(data: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    # A config stores each size under one name (GPT-2: n_layer / n_embd, DistilBERT: n_layers
    # / dim); the others are aliases through its attribute map.
    return next((k for k in keys if isinstance(data.get(k), int)), None)


def _side_files(source: Path | None) -> list[Path]:
    if source is None or not source.is_dir():
        return []
    files = [source / n for n in SIDE_FILES if (source / n).is_file()]
    modules = source / "modules.json"
    if modules.is_file():  # sentence-transformers: its pooling / normalize module folders
        try:
            entries = json.loads(modules.read_text())
        except (OSError, json.JSONDecodeError):
            entries = []
        for entry in entries if isinstance(entries, list) else []:
            sub = source / str(entry.get("path", ""))
            if entry.get("path") and sub.is_dir() and sub.resolve().parent == source.resolve():
                files.append(sub)
    return files


def _state(live: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:

    state = {k: v.detach().cpu().contiguous() for k, v in live.state_dict().items()}
    return dedupe_state(state)


def save_hf_folder(
    model: nn.Module, folder: Path | str, ctx: Any = None, *, source: Path | str | None = None
) -> dict[str, Any]:
    """Write ``model`` (an ``HFModel`` or a transformers model) as a Hugging Face folder.

    The folder replaces ``folder`` only once complete (written beside it, then renamed).

    Args:
        model: the compacted model.
        folder: the folder to write.
        ctx: the run's ``RunContext``: its source folder gives the tokenizer files, its
            recorded original config the ``config`` changes reported.
        source: the folder to copy tokenizer / processor files from (default: ctx's model).

    Returns:
        ``{"path", "size_bytes", "plain_transformers", "manifest_ops", "config": {changed
        fields}, "files", "notes"}``.

    Raises:
        ExportError: not a transformers model, or the folder cannot be written.
    """

    live, settings = _unwrap(model)
    folder = Path(folder)
    if source is None and ctx is not None:
        loaded = getattr(ctx, "loaded", None)
        source = getattr(loaded, "path", None)
    source = Path(source) if source is not None else None
    data, summary, ops = describe_config(live)
    architecture = getattr(getattr(ctx, "loaded", None), "architecture", None)
    recorded = architecture.extra.get("config") if architecture is not None else None
    # Through JSON, as config.json will be (integer label ids become strings).
    before = (
        json.loads(json.dumps(recorded, default=str)) if recorded else _config_dict(live.config)
    )
    changed = {k: v for k, v in data.items() if before.get(k, v) != v}
    state, aliases = _state(live)
    code = _portable_code(live, data, ops)
    data["architectures"] = [type(live).__name__]
    data["compress"] = {
        "format_version": FORMAT_VERSION,
        "class": type(live).__name__,
        **settings,
        "plain_transformers": not ops,
        "layers": summary,
        "manifest": ops,
        "aliases": aliases,
        **(code.structure if code.portable else {}),
    }
    if code.auto_map:
        data["auto_map"] = code.auto_map
    notes = [] if code.portable else [f"plain transformers cannot load this folder: {code.reason}"]
    side = _side_files(source)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (stage / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        safetensors.torch.save_file(state, str(stage / WEIGHTS_NAME), metadata={"format": "pt"})
        for path in side:
            if path.is_dir():
                shutil.copytree(path, stage / path.name)
            else:
                shutil.copy2(path, stage / path.name)
        for name, text in code.files.items():
            (stage / name).write_text(text)
        notes += _write_sentence_transformers(stage, data, settings, source)
        # The model's own tokenizer (rewritten by vocabulary pruning) replaces the copies.
        rewritten = write_tokenizer_files(model, stage)
        os.chmod(stage, 0o755)
        _replace_dir(stage, folder)
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        raise ExportError(f"could not write the Hugging Face folder {folder}: {e}") from None
    rows = changed.get("vocab_size")
    copied = {p.name for p in side} & {"tokenizer.json", "vocab.txt"}
    if rows is not None and copied - set(rewritten):
        notes.append(
            f"the vocabulary now has {rows} entries; the tokenizer files were copied unchanged"
        )
    files = sorted(p.name for p in folder.iterdir())
    return {
        "path": str(folder),
        "size_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        "plain_transformers": not ops,
        "custom_code": bool(code.files),
        "loads_with": _loads_with(ops, code, settings),
        "manifest_ops": len(ops),
        "config": changed,
        "files": files,
        "notes": notes,
    }


def _replace_dir(stage: Path, folder: Path) -> None:
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
    os.replace(stage, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_from_config_dict(cls: type, data: dict[str, Any], *, meta: bool) -> nn.Module:
    config = type_config(data)
    if meta:
        with torch.device("meta"):
            return cls(config)
    return cls(config)


def _loads_with(ops: list, code: Any, settings: dict[str, Any]) -> str:
    """How a user loads the folder, for the report."""
    if settings["task"] == "embedding":
        call = "SentenceTransformer(folder"
    else:
        call = "transformers AutoModel*.from_pretrained(folder"
    if not ops:
        return call + ")"
    if code.files:
        return call + ", trust_remote_code=True)"
    return "compressor.load only"


def _portable_code(live: nn.Module, data: dict[str, Any], ops: list) -> Any:
    if not ops:  # a stock config describes the model: no custom code
        return PortableCode()
    return portable_code(live, data, ops, lambda cls, d: build_from_config_dict(cls, d, meta=True))


def _write_sentence_transformers(
    folder: Path, data: dict[str, Any], settings: dict[str, Any], source: Path | None
) -> list[str]:
    if settings["task"] != "embedding":
        return []
    return write_sentence_transformers(folder, type_config(data), settings, source)
