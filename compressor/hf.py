"""Hugging Face model folders, loaded offline through transformers (extra ``hf``).

A transformers model is wrapped in :class:`HFModel` so that, like every model compress
handles, ``forward(**named inputs)`` returns one tensor: class logits, a pooled sentence
embedding (mean / CLS / max pooling and normalisation as a sentence-transformers folder
says), or the last hidden state. The original architecture is recorded as its config, so a
compacted model is rebuilt from JSON, never from pickle or remote code.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compressor.architecture import ArchitectureRef, register_builder
from compressor.checkpoint import LoadedModel
from compressor.errors import CheckpointError

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_SEQ_LEN = 128


def _transformers():
    try:
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # compress draws its own progress
        hf_logging.set_verbosity_error()
    except ImportError:
        raise CheckpointError(
            "Hugging Face models need the transformers package",
            hint="pip install 'compress[hf]'",
        ) from None
    return transformers


class HFModel(nn.Module):
    """A transformers model whose forward returns a single tensor."""

    def __init__(self, model: nn.Module, task: str, pooling: str = "mean",
                 normalize: bool = False):
        super().__init__()
        self.model = model
        self.task = task
        self.pooling = pooling
        self.normalize = normalize
        names = inspect.signature(model.forward).parameters
        self.accepts = [n for n in (*TEXT_INPUTS, "pixel_values") if n in names]

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids, "pixel_values": pixel_values}
        kwargs = {k: v for k, v in given.items() if v is not None and k in self.accepts}
        out = self.model(**kwargs)
        if self.task == "classification":
            return out.logits
        hidden = out.last_hidden_state
        if self.task == "base":
            return hidden
        return pool(hidden, attention_mask, self.pooling, self.normalize)


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, mode: str, normalize: bool):
    """Sentence embedding from token states (sentence-transformers' pooling modes)."""
    if mode == "cls":
        emb = hidden[:, 0]
    else:
        weights = (mask if mask is not None else torch.ones(hidden.shape[:2], device=hidden.device))
        weights = weights.unsqueeze(-1).to(hidden.dtype)
        if mode == "max":
            emb = hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(1)
        else:
            emb = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
    return nn.functional.normalize(emb, dim=-1) if normalize else emb


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


def _model_class(transformers: Any, config: Any, task: str) -> Any:
    names = list(getattr(config, "architectures", None) or [])
    if task == "classification":
        names = [n for n in names if "Classification" in n] or [
            f"{type(config).__name__.replace('Config', '')}ForSequenceClassification"]
    elif task in ("embedding", "base"):
        base = type(config).__name__.replace("Config", "Model")
        names = [n for n in names if n.endswith("Model")] or [base]
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None and isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    raise CheckpointError(f"transformers has no model class {names} for this folder")


def _auto_task(config: Any, pooling: str | None) -> str:
    if pooling is not None:
        return "embedding"
    if any("Classification" in a for a in (getattr(config, "architectures", None) or [])):
        return "classification"
    return "embedding" if getattr(config, "model_type", "") in ("bert", "roberta", "distilbert") \
        else "base"


def build_hf(arch: ArchitectureRef, safe: bool = False) -> nn.Module:
    """Build an :class:`HFModel` with fresh weights from recorded config (no remote code)."""
    transformers = _transformers()
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
    return HFModel(model, extra["task"], extra.get("pooling", "mean"), extra.get("normalize", False))


register_builder("hf", build_hf)


def hf_architecture(model: HFModel) -> ArchitectureRef:
    config = model.model.config.to_dict()
    return ArchitectureRef("hf", extra={"config": config, "class": type(model.model).__name__,
                                        "task": model.task, "pooling": model.pooling,
                                        "normalize": model.normalize})


def default_input_specs(model: HFModel, seq_len: int = DEFAULT_SEQ_LEN) -> dict[str, Any]:
    from compressor.plan import InputSpec

    config = model.model.config
    specs: dict[str, Any] = {}
    if "pixel_values" in model.accepts:
        size = getattr(config, "image_size", 224)
        channels = getattr(config, "num_channels", 3)
        specs["pixel_values"] = InputSpec(shape=[1, channels, size, size])
        return specs
    specs["input_ids"] = InputSpec(shape=[1, seq_len], dtype="int64", low=0,
                                   high=config.vocab_size)
    if "attention_mask" in model.accepts:
        specs["attention_mask"] = InputSpec(shape=[1, seq_len], dtype="int64", low=1, high=2)
    if "token_type_ids" in model.accepts and getattr(config, "type_vocab_size", 0) > 1:
        specs["token_type_ids"] = InputSpec(shape=[1, seq_len], dtype="int64", low=0, high=1)
    return specs


def load_hf_folder(spec: Any, path: Path, *, safe: bool = False) -> LoadedModel:
    """Load a Hugging Face model folder offline (weights via safetensors or weights-only torch)."""
    transformers = _transformers()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a Hugging Face model folder (no config.json)")
    if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        raise CheckpointError(f"{path} has no model.safetensors or pytorch_model.bin")
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}/config.json cannot be read by transformers ({e})") from None
    pooling, normalize = read_sentence_transformers(path)
    task = spec.task if spec.task != "auto" else _auto_task(config, pooling)
    cls = _model_class(transformers, config, task)
    try:
        model = cls.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise CheckpointError(f"{path}: transformers could not load the weights ({e})") from None
    wrapped = HFModel(model.eval(), task, pooling or "mean", normalize).eval()
    specs = dict(spec.inputs) or default_input_specs(wrapped)
    tokenizer = None
    tok_path = Path(spec.tokenizer) if spec.tokenizer else path
    if (tok_path / "tokenizer.json").is_file() or tok_path.suffix == ".json":
        from compressor.tokenization import load_tokenizer, sequence_length

        tokenizer = load_tokenizer(tok_path, sequence_length(specs, DEFAULT_SEQ_LEN))
    return LoadedModel(wrapped, "hf", path, hf_architecture(wrapped), specs, tokenizer=tokenizer,
                       notes=[f"{cls.__name__} ({task}"
                              + (f", {pooling} pooling" if task == "embedding" else "") + ")"])
