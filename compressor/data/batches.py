"""Batches of named inputs: the dataset type every source produces, collation, loaders with
seeded shuffling, how raw arrays are matched to the model's input names, few-shot subsets."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from compressor.errors import DataError
from compressor.forward import TORCH_DTYPES

LABEL_KEYS = ("labels", "label", "target", "targets", "y")


@dataclass
class Batch:
    """Named model inputs plus the target (None for unlabelled data)."""

    inputs: dict[str, torch.Tensor]
    target: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        target = self.target.to(device) if self.target is not None else None
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, target)

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


class NamedTensorDataset(Dataset):
    """Examples stored as whole tensors: ``inputs[name][i]`` and ``target[i]``."""

    def __init__(
        self,
        inputs: Mapping[str, torch.Tensor],
        target: torch.Tensor | None = None,
        *,
        origin: str = "data",
    ):
        sizes = {name: len(t) for name, t in inputs.items()}
        if target is not None:
            sizes["<labels>"] = len(target)
        if len(set(sizes.values())) > 1:
            raise DataError(
                f"{origin}: inputs and labels have different numbers of examples: {sizes}",
                hint="every tensor (and the labels) needs one row per example",
            )
        self.inputs = dict(inputs)
        self.target = target

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def __getitem__(self, i: int):
        x = {k: v[i] for k, v in self.inputs.items()}
        return x, (self.target[i] if self.target is not None else None)

    def subset(self, indices: Sequence[int]) -> NamedTensorDataset:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        target = self.target[idx] if self.target is not None else None
        return NamedTensorDataset({k: v[idx] for k, v in self.inputs.items()}, target)


def collate(items: Sequence[tuple[dict[str, torch.Tensor], Any]]) -> Batch:
    inputs = {k: torch.stack([x[k] for x, _ in items]) for k in items[0][0]}
    targets = [y for _, y in items]
    if any(y is None for y in targets):
        return Batch(inputs, None)
    return Batch(inputs, torch.stack([torch.as_tensor(y) for y in targets]))


@dataclass
class InputLayout:
    """What the model expects: input names with per-example shapes and dtypes."""

    names: list[str]
    shapes: dict[str, tuple[int, ...]]  # per example (batch axis removed)
    dtypes: dict[str, torch.dtype]

    @classmethod
    def from_specs(cls, specs: Mapping[str, Any]) -> InputLayout:
        return cls(
            names=list(specs),
            shapes={n: tuple(s.shape[1:]) for n, s in specs.items()},
            dtypes={n: TORCH_DTYPES[s.dtype] for n, s in specs.items()},
        )


def fit_to_layout(
    name: str, tensor: torch.Tensor, layout: InputLayout, origin: str
) -> torch.Tensor:
    """Reshape a batch of examples to the input's per-example shape and cast to its dtype."""
    want = layout.shapes.get(name)
    if want is not None and tuple(tensor.shape[1:]) != want:
        per_example = int(np.prod(tensor.shape[1:])) if tensor.dim() > 1 else 1
        # Sequence inputs may differ in length from the example shape; only fixed shapes reshape.
        if per_example == int(np.prod(want)):
            tensor = tensor.reshape(tensor.shape[0], *want)
        elif layout.dtypes.get(name, torch.float32).is_floating_point:
            raise DataError(
                f"{origin}: input {name!r} has examples of shape {tuple(tensor.shape[1:])}, "
                f"the model expects {want}",
                hint="fix the data or model.inputs so that the shapes agree",
            )
    dtype = layout.dtypes.get(name)
    return tensor.to(dtype) if dtype is not None else tensor


def assign_names(arrays: dict[str, torch.Tensor], layout: InputLayout, origin: str):
    """Split a name->tensor mapping into model inputs and a target."""
    target = None
    for key in LABEL_KEYS:
        if key in arrays:
            target = arrays.pop(key)
            break
    if set(layout.names) <= set(arrays):
        inputs = {n: arrays[n] for n in layout.names}
    elif len(arrays) == 1 and len(layout.names) == 1:
        inputs = {layout.names[0]: next(iter(arrays.values()))}
    else:
        raise DataError(
            f"{origin}: holds tensors {sorted(arrays)} but the model's inputs are {layout.names}",
            hint="name the tensors after the model inputs (plus 'labels'), or give model.inputs",
        )
    inputs = {n: fit_to_layout(n, t, layout, origin) for n, t in inputs.items()}
    return inputs, target


class _NormalizedLoader:
    """Adapts a user DataLoader's batches to :class:`Batch`."""

    def __init__(self, loader: Any, layout: InputLayout, origin: str):
        self.loader, self.layout, self.origin = loader, layout, origin

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for raw in self.loader:
            inputs, target = _normalize_batch(raw, self.layout, self.origin)
            yield Batch(inputs, target)


def _normalize_batch(raw: Any, layout: InputLayout, origin: str):
    if isinstance(raw, Batch):
        return raw.inputs, raw.target
    if isinstance(raw, Mapping):
        arrays = {k: torch.as_tensor(v) for k, v in raw.items()}
        return assign_names(arrays, layout, origin)
    if isinstance(raw, (tuple, list)) and len(raw) == 2 and len(layout.names) == 1:
        x = fit_to_layout(layout.names[0], torch.as_tensor(raw[0]), layout, origin)
        return {layout.names[0]: x}, torch.as_tensor(raw[1])
    if isinstance(raw, torch.Tensor) and len(layout.names) == 1:
        return {layout.names[0]: fit_to_layout(layout.names[0], raw, layout, origin)}, None
    raise DataError(f"{origin}: cannot read batches of type {type(raw).__name__}")


def make_loader(
    source: Dataset | _NormalizedLoader,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    sampler: Any = None,
) -> Any:
    """A deterministic loader of :class:`Batch` (shuffled by a generator seeded with ``seed``)."""
    if isinstance(source, _NormalizedLoader):
        return source
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        source,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        collate_fn=collate,
        num_workers=num_workers,
        drop_last=False,
    )


def few_shot_subset(dataset: Dataset, per_class: int, seed: int) -> NamedTensorDataset:
    """Keep ``per_class`` labelled examples of each class, chosen with ``seed``."""
    if not isinstance(dataset, NamedTensorDataset) or dataset.target is None:
        items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
        if any(y is None for _, y in items):
            raise DataError("few_shot needs labelled training data")
        batch = collate(items)
        dataset = NamedTensorDataset(batch.inputs, batch.target)
    target = dataset.target
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for cls in sorted(set(target.tolist())):
        idx = (target == cls).nonzero().flatten()
        perm = idx[torch.randperm(len(idx), generator=generator)]
        chosen.extend(perm[:per_class].tolist())
    return dataset.subset(sorted(chosen))
