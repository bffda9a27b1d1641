"""Custom code that lets plain transformers load a compacted model no stock config describes.

transformers 5 configs of BERT, RoBERTa, DistilBERT, ALBERT, ELECTRA and GPT-2 derive the head
size as hidden size / head count and have no ``pruned_heads``, and no config states per-layer
widths; a folder holding such a model carries, by the Hub's convention for custom
architectures, two small files and ``auto_map`` entries in ``config.json``:

* ``configuration_compressed.py``: ``Compressed<Arch>Config``, a subclass of the original
  config class (``model_type`` unchanged) whose ``compress`` field holds the per-layer
  structure (``layers``: heads, head size and FFN width per layer), the structure ops on top
  of what the stock config builds (``manifest``), and the tensor shapes they change
  (``shapes``);
* ``modeling_compressed.py``: a subclass of each original model class (base model and the
  saved task class) whose ``__init__`` replays that structure before weights are loaded, so
  ``from_pretrained`` loads the tensors strictly. Its replayer is
  ``compressor/hf_portable_runtime.py`` copied verbatim: torch and transformers only.

``AutoModel.from_pretrained(folder, trust_remote_code=True)`` (and the task's Auto class)
then loads the model where compress is not installed. ``model_type`` stays the original's,
so compress's own reader and tools keyed on it still see a BERT; without
``trust_remote_code`` transformers builds the stock model and refuses the tensors (size
mismatch) rather than loading a wrong model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from compressor.formats.hf import portable_runtime as runtime

CONFIG_FILE = "configuration_compressed.py"
MODELING_FILE = "modeling_compressed.py"
PREFIX = "Compressed"
# Auto classes a folder may map, with the transformers table naming each one's classes.
AUTO_CLASSES = (
    ("AutoModel", "MODEL_MAPPING_NAMES"),
    ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
    ("AutoModelForMultipleChoice", "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES"),
    ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("AutoModelForPreTraining", "MODEL_FOR_PRETRAINING_MAPPING_NAMES"),
    ("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
)


@dataclass
class PortableCode:
    """What a folder needs so that plain transformers loads it (or why it cannot have it)."""

    files: dict[str, str] = field(default_factory=dict)  # file name -> text
    auto_map: dict[str, str] = field(default_factory=dict)
    structure: dict[str, Any] = field(default_factory=dict)  # added to config.json's compress
    reason: str | None = None  # set when no custom code can describe the model

    @property
    def portable(self) -> bool:
        return self.reason is None


def auto_classes(model_type: str, class_name: str) -> list[str]:
    """The Auto classes whose table maps ``model_type`` to ``class_name``."""
    from transformers.models.auto import modeling_auto  # deferred: extra 'hf'

    found = []
    for auto, table in AUTO_CLASSES:
        names = getattr(modeling_auto, table, {}).get(model_type)
        names = (names,) if isinstance(names, str) else tuple(names or ())
        if class_name in names:
            found.append(auto)
    return found


def base_prefix(live: nn.Module) -> str:
    """Where ``live`` keeps its base model (``""`` when it is the base model)."""
    prefix = getattr(live, "base_model_prefix", "") or ""
    inner = getattr(live, prefix, None) if prefix else None
    return prefix if isinstance(inner, nn.Module) and inner is not live else ""


def tensor_shapes(fresh: nn.Module, live: nn.Module) -> dict[str, list[int]]:
    """``{state-dict key: shape}`` of ``live``'s tensors whose shape ``fresh`` lacks."""
    want = {k: list(v.shape) for k, v in fresh.state_dict().items()}
    return {k: list(v.shape) for k, v in live.state_dict().items() if want.get(k) != list(v.shape)}


def _classes(live: nn.Module) -> list[type]:
    """The original classes to subclass: the base model's class, then the saved class."""
    base = type(getattr(live, "base_model", live))
    return [base] if base is type(live) else [base, type(live)]


def _config_source(config_cls: type) -> str:
    name = config_cls.__name__
    return f'''"""Configuration of a compacted {name[: -len("Config")]} model, written by compress.

A {name} whose layers may differ from what its sizes imply: fewer attention heads with
the hidden size kept, or a width of their own per layer. Needs only transformers.
"""

from transformers import {name}


class {PREFIX}{name}({name}):
    """{name} plus ``compress``: ``layers`` (per layer: ``heads``, ``head_dim``, ``ffn``),
    ``manifest`` (structure ops on top of what {name} builds), ``shapes`` (the tensors
    those ops resize) and ``base_prefix``; replayed by modeling_compressed.py."""

    compress: dict | None = None

    def _per_layer(self, key):
        return [layer.get(key) for layer in (self.compress or {{}}).get("layers", [])]

    @property
    def heads_per_layer(self):
        return self._per_layer("heads")

    @property
    def head_dim_per_layer(self):
        return self._per_layer("head_dim")

    @property
    def ffn_per_layer(self):
        return self._per_layer("ffn")
'''


def _modeling_source(classes: list[type], config_cls: type) -> str:
    runtime_text = Path(runtime.__file__).read_text(encoding="utf-8")
    names = sorted(c.__name__ for c in classes)
    lines = [
        runtime_text.rstrip(),
        "",
        "",
        "# ------------------------------------------------------------------ the model classes",
        "# (import after the replayer: ``from __future__`` must open the file)",
        "",
        f"from transformers import {', '.join(names)}  # noqa: E402",
        "",
        f"from .configuration_compressed import {PREFIX}{config_cls.__name__}  # noqa: E402",
    ]
    for cls in classes:
        lines += [
            "",
            "",
            f"class {PREFIX}{cls.__name__}({cls.__name__}):",
            f"    config_class = {PREFIX}{config_cls.__name__}",
            "",
            "    def __init__(self, config, *args, **kwargs):",
            "        super().__init__(config, *args, **kwargs)",
            "        # Before from_pretrained loads the weights: the tensors then fit exactly.",
            '        apply_compressed_structure(self, getattr(config, "compress", None))',
        ]
    return "\n".join(lines) + "\n"


def portable_code(
    live: nn.Module, data: dict[str, Any], ops: list[dict[str, Any]], build: Any
) -> PortableCode:
    """The custom code for ``live``, whose ``config.json`` is ``data`` plus the structure
    ``ops``; ``build(cls, data)`` builds a class from a config dict on the meta device.

    The code is checked before it is returned: the model it builds from ``data`` must have
    every tensor of ``live`` with its shape, or the reason says what does not fit.
    """
    unportable = sorted(
        {op.get("type") for op in ops if op.get("op") == "replace"} - set(runtime.REPLACEABLE_TYPES)
    )
    if unportable:
        return PortableCode(
            reason=f"the model holds compress's own module types {unportable}, which only "
            "compress rebuilds"
        )
    classes = _classes(live)
    fresh = build(type(live), data)
    structure = {
        "structure_version": runtime.STRUCTURE_VERSION,
        "base_prefix": base_prefix(live),
        "shapes": tensor_shapes(fresh, live),
    }
    # JSON round trip: the structure is replayed as config.json will hold it.
    replay = json.loads(json.dumps({"manifest": ops, **structure}))
    for cls in classes:
        model = build(cls, data)
        try:
            runtime.apply_compressed_structure(model, replay)
        except (runtime.StructureError, IndexError, KeyError, AttributeError) as e:
            return PortableCode(reason=f"the structure does not replay on {cls.__name__}: {e}")
        if cls is type(live):
            got = {k: list(v.shape) for k, v in model.state_dict().items()}
            want = {k: list(v.shape) for k, v in live.state_dict().items()}
            if got != want:
                wrong = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
                return PortableCode(reason=f"replayed tensors differ from the model's: {wrong[:5]}")
    config_cls = type(live.config)
    auto_map = {"AutoConfig": f"{CONFIG_FILE[:-3]}.{PREFIX}{config_cls.__name__}"}
    model_type = data.get("model_type", "")
    for cls in classes:
        for auto in auto_classes(model_type, cls.__name__) or (
            ["AutoModel"] if cls is classes[0] else []
        ):
            auto_map.setdefault(auto, f"{MODELING_FILE[:-3]}.{PREFIX}{cls.__name__}")
    return PortableCode(
        files={
            CONFIG_FILE: _config_source(config_cls),
            MODELING_FILE: _modeling_source(classes, config_cls),
        },
        auto_map=auto_map,
        structure=structure,
    )
