"""Data sources for training, evaluation and calibration.

A source is a string in the plan:

* ``builtin:digits?split=train`` – scikit-learn's 1,797 real handwritten digits, with a
  deterministic stratified split (``split=train|test|all``, ``test_size=0.25``).
* a tensors file – ``.safetensors``, ``.npz`` or ``.pt`` holding one tensor per model input
  (by name) plus optional labels (``labels``/``label``/``target``/``targets``/``y``).
* a text file – ``.txt`` (one example per line, unlabelled), ``.jsonl`` (``{"text", "label"}``)
  or ``.csv`` (columns ``text`` and optional ``label``), tokenized with the model's tokenizer;
  with ``?block=N`` its lines are documents of running text cut into N-token causal-LM blocks
  (``compressor.data.lm_blocks``; ``limit=M`` keeps the first M blocks).
* ``package.module:function`` (optionally ``?key=value&...`` passed as keyword arguments) that
  returns a ``Dataset`` or ``DataLoader`` of ``(inputs, label)`` pairs or dicts.

Every example is normalised to named inputs matching ``model.inputs`` plus an optional target;
a flat example whose size matches an input's per-example shape is reshaped to it."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from compressor.data.batches import (
    LABEL_KEYS,
    InputLayout,
    NamedTensorDataset,
    _NormalizedLoader,
    assign_names,
    fit_to_layout,
)
from compressor.data.english import ENGLISH_BUILTINS
from compressor.data.lm_blocks import token_blocks
from compressor.data.python_docs import PYTHON_DOCS_BUILTINS
from compressor.data.text import TEXT_BUILTINS
from compressor.errors import DataError
from compressor.files.tensors import read_tensor_mapping
from compressor.safe_import import resolve_import
from compressor.spec.sections import IMPORT_REF

TENSOR_SUFFIXES = (".safetensors", ".npz", ".pt", ".pth")


TEXT_SUFFIXES = (".txt", ".jsonl", ".csv")


@dataclass(frozen=True)
class SourceRef:
    """A parsed data-source string."""

    text: str
    kind: str  # builtin | tensors | text | callable
    target: str  # builtin name, file path, or import reference
    options: dict[str, str]


def parse_source(text: str, base_dir: Path | None = None) -> SourceRef:
    """Parse a plan's data-source string; paths resolve against ``base_dir`` (the plan's folder)."""

    head, _, query = text.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    if head.startswith("builtin:"):
        name = head.split(":", 1)[1]
        if name not in BUILTINS:
            raise DataError(
                f"unknown built-in dataset {name!r} in {text!r}",
                hint=f"built-ins: {', '.join(sorted(BUILTINS))}",
            )
        return SourceRef(text, "builtin", name, options)
    suffix = Path(head).suffix.lower()
    if suffix in TENSOR_SUFFIXES or suffix in TEXT_SUFFIXES:
        path = Path(head)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        kind = "tensors" if suffix in TENSOR_SUFFIXES else "text"
        return SourceRef(text, kind, str(path), options)
    if IMPORT_REF.match(head):
        return SourceRef(text, "callable", head, options)
    raise DataError(
        f"cannot tell what data source {text!r} is",
        hint="use builtin:digits, a .safetensors/.npz/.pt tensors file, a .txt/.jsonl/.csv "
        "text file, or 'package.module:function'",
    )


def _load_tensor_file(path: Path, layout: InputLayout, trust_pickle: bool) -> NamedTensorDataset:

    arrays = read_tensor_mapping(path, trust_pickle=trust_pickle, what="data file")
    inputs, target = assign_names(dict(arrays), layout, str(path))
    return NamedTensorDataset(inputs, target, origin=str(path))


def _read_text_records(path: Path, options: Mapping[str, str]) -> tuple[list[str], list[Any]]:
    text_key = options.get("text", "text")
    label_key = options.get("label", "label")
    texts: list[str] = []
    labels: list[Any] = []
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            texts = [t for t in texts if t]
        elif suffix == ".jsonl":
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict) or text_key not in record:
                    raise DataError(
                        f"{path}:{lineno}: each line must be an object with a {text_key!r} field",
                        hint="or name the text field with ?text=FIELD",
                    )
                texts.append(str(record[text_key]))
                if label_key in record:
                    labels.append(record[label_key])
        else:
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or text_key not in reader.fieldnames:
                    raise DataError(
                        f"{path}: the CSV header has no {text_key!r} column "
                        f"(found {reader.fieldnames})",
                        hint="add a 'text' column or name it with ?text=COLUMN",
                    )
                for row in reader:
                    texts.append(row[text_key])
                    if label_key in row and row[label_key] not in (None, ""):
                        labels.append(row[label_key])
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not texts:
        raise DataError(f"{path}: holds no examples")
    if labels and len(labels) != len(texts):
        raise DataError(f"{path}: {len(texts)} texts but only {len(labels)} labels")
    return texts, labels


def _labels_to_tensor(labels: list[Any], label_names: Sequence[str] | None, origin: str):
    if not labels:
        return None
    if all(
        isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())
        for v in labels
    ):
        return torch.tensor([int(v) for v in labels], dtype=torch.long)
    if label_names is None:
        raise DataError(
            f"{origin}: labels are strings ({labels[0]!r}, ...)",
            hint="give data.label_names (class names in index order) or use integer labels",
        )
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({str(v) for v in labels} - set(index))
    if unknown:
        raise DataError(f"{origin}: labels {unknown[:5]} are not in data.label_names")
    return torch.tensor([index[str(v)] for v in labels], dtype=torch.long)


def _load_text_file(
    path: Path,
    options: Mapping[str, str],
    layout: InputLayout,
    tokenizer: Callable[[list[str]], dict[str, torch.Tensor]] | None,
    label_names: Sequence[str] | None,
) -> NamedTensorDataset:
    if tokenizer is None:
        raise DataError(
            f"text data {path} needs a tokenizer, and the model has none",
            hint="use an hf model folder with tokenizer files, or set model.tokenizer",
        )
    texts, labels = _read_text_records(path, options)
    if "block" in options:  # running text for a causal LM: consecutive token blocks
        if labels:
            raise DataError(
                f"{path}: ?block= cuts text into language-model blocks, and this file has labels",
                hint="drop the label field, or drop ?block= for a classification dataset",
            )
        return token_blocks(
            texts, tokenizer, layout, str(path), block=options["block"], limit=options.get("limit")
        )
    encoded = tokenizer(texts)
    arrays = {n: t for n, t in encoded.items() if n in layout.names}
    missing = [n for n in layout.names if n not in arrays]
    if missing:
        raise DataError(
            f"{path}: the tokenizer produces {sorted(encoded)}, the model also needs {missing}"
        )
    return NamedTensorDataset(arrays, _labels_to_tensor(labels, label_names, str(path)))


def _digits(options: Mapping[str, str], layout: InputLayout) -> NamedTensorDataset:
    try:
        from sklearn.datasets import load_digits  # deferred: extra 'samples'
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DataError(
            "builtin:digits needs scikit-learn", hint="pip install 'compress[samples]'"
        ) from None
    split = options.get("split", "train")
    if split not in ("train", "test", "all"):
        raise DataError(f"builtin:digits: split must be train, test or all, not {split!r}")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel values are 0..16
    if split != "all":
        test_size = float(options.get("test_size", 0.25))
        xtr, xte, ytr, yte = train_test_split(
            x, y, test_size=test_size, random_state=int(options.get("seed", 0)), stratify=y
        )
        x, y = (xtr, ytr) if split == "train" else (xte, yte)
    arrays = {"x": torch.from_numpy(np.ascontiguousarray(x)), "labels": torch.from_numpy(y).long()}
    inputs, target = assign_names(arrays, layout, "builtin:digits")
    return NamedTensorDataset(inputs, target)


BUILTINS: dict[str, Callable[[Mapping[str, str], InputLayout], NamedTensorDataset]] = {
    "digits": _digits,
    **TEXT_BUILTINS,  # builtin:pydoc, builtin:docstrings (compressor.data.text)
    **ENGLISH_BUILTINS,  # builtin:wordnet, news, reviews, mix (compressor.data.english)
    **PYTHON_DOCS_BUILTINS,  # builtin:python_docs: causal-LM token blocks
}


class _NormalizedDataset(Dataset):
    """Wraps a user Dataset so each item becomes ``(named inputs, target)``."""

    def __init__(self, dataset: Dataset, layout: InputLayout, origin: str):
        self.dataset, self.layout, self.origin = dataset, layout, origin

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        return normalize_example(self.dataset[i], self.layout, self.origin)


def normalize_example(item: Any, layout: InputLayout, origin: str):
    """Turn a user example (tensor, ``(x, y)`` pair or dict) into ``(named inputs, target)``."""
    if isinstance(item, Mapping):
        arrays = {k: torch.as_tensor(v) for k, v in item.items()}
        target = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None)
        inputs = {n: arrays[n] for n in layout.names if n in arrays}
        if len(inputs) != len(layout.names):
            if len(arrays) == 1 and len(layout.names) == 1:
                inputs = {layout.names[0]: next(iter(arrays.values()))}
            else:
                raise DataError(
                    f"{origin}: example keys {sorted(item)} do not name the model inputs "
                    f"{layout.names}"
                )
    elif isinstance(item, (tuple, list)):
        if len(item) == 2 and len(layout.names) == 1:
            inputs, target = {layout.names[0]: torch.as_tensor(item[0])}, item[1]
        elif len(item) == len(layout.names) + 1:
            inputs = {n: torch.as_tensor(v) for n, v in zip(layout.names, item[:-1], strict=True)}
            target = item[-1]
        elif len(item) == len(layout.names):
            inputs, target = (
                {n: torch.as_tensor(v) for n, v in zip(layout.names, item, strict=True)},
                None,
            )
        else:
            raise DataError(
                f"{origin}: examples have {len(item)} items; expected the {len(layout.names)} "
                f"model inputs {layout.names}, optionally followed by a label"
            )
    else:
        if len(layout.names) != 1:
            raise DataError(f"{origin}: a bare tensor example cannot feed inputs {layout.names}")
        inputs, target = {layout.names[0]: torch.as_tensor(item)}, None
    fitted = {}
    for name, tensor in inputs.items():
        fitted[name] = fit_to_layout(name, tensor.unsqueeze(0), layout, origin)[0]
    return fitted, (torch.as_tensor(target) if target is not None else None)


def load_source(
    ref: SourceRef,
    layout: InputLayout,
    *,
    safe: bool = False,
    trust_pickle: bool = False,
    tokenizer: Callable[[list[str]], dict[str, torch.Tensor]] | None = None,
    label_names: Sequence[str] | None = None,
) -> Dataset | _NormalizedLoader:
    """Load one data source as a Dataset of ``(inputs, target)`` (or an adapted DataLoader)."""
    if ref.kind == "builtin":
        builtin = BUILTINS[ref.target]
        if getattr(builtin, "needs_tokenizer", False):  # text: tokenised like the model's input
            return builtin(ref.options, layout, tokenizer)
        return builtin(ref.options, layout)
    if ref.kind in ("tensors", "text"):
        path = Path(ref.target)
        if not path.is_file():
            raise DataError(f"data file {path} does not exist", hint="check the path in data:")
        if ref.kind == "tensors":
            return _load_tensor_file(path, layout, trust_pickle)
        return _load_text_file(path, ref.options, layout, tokenizer, label_names)
    factory = resolve_import(
        ref.target,
        what=f"data source {ref.target!r}",
        safe=safe,
        error=DataError,
        noun="module ",
        refusal_hint="use a built-in or file data source, allow it with --allow-import "
        f"{ref.target.split('.')[0]}, or run without --safe / safe: true",
    )
    if not callable(factory):
        raise DataError(f"data source {ref.target!r} is not callable")
    try:
        obj = factory(**ref.options)
    except TypeError as e:
        raise DataError(f"data source {ref.text!r}: calling it failed ({e})") from None
    if isinstance(obj, DataLoader) or (
        hasattr(obj, "__iter__") and not hasattr(obj, "__getitem__")
    ):
        return _NormalizedLoader(obj, layout, ref.text)
    if isinstance(obj, NamedTensorDataset):
        return obj
    if hasattr(obj, "__getitem__") and hasattr(obj, "__len__"):
        return _NormalizedDataset(obj, layout, ref.text)
    raise DataError(
        f"data source {ref.text!r} returned {type(obj).__name__}",
        hint="return a torch Dataset or DataLoader",
    )
