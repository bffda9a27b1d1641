"""The plan's data sources as one object: loaded lazily, cached per split, re-tokenised when
the run adopts a rewritten tokenizer, and turned into loaders."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compressor.data.batches import (
    Batch,
    InputLayout,
    NamedTensorDataset,
    collate,
    few_shot_subset,
    make_loader,
)
from compressor.data.sources import load_source, parse_source
from compressor.errors import DataError


class DataBundle:
    """The plan's data sources, loaded lazily and cached."""

    def __init__(
        self,
        plan: Any,
        base_dir: Path,
        input_specs: dict[str, Any],
        tokenizer: Callable | None = None,
    ):
        self.spec = plan.data
        self.base_dir = base_dir
        self.safe = plan.safe
        self.layout = InputLayout.from_specs(input_specs)
        self.tokenizer = tokenizer
        self._cache: dict[str, Any] = {}

    def set_tokenizer(self, tokenizer: Callable | None) -> None:
        """Tokenise text with ``tokenizer`` from now on (after vocabulary pruning changed the
        ids); datasets already loaded are dropped so they are tokenised again."""
        self.tokenizer = tokenizer
        self._cache.clear()

    def has(self, split: str) -> bool:
        if split == "calibration":
            return self.spec.calibration is not None or self.spec.train is not None
        return getattr(self.spec, split) is not None

    def dataset(self, split: str) -> Any:
        """The dataset of ``split`` (train, eval or calibration)."""
        if split not in self._cache:
            text = getattr(self.spec, split)
            if split == "calibration" and text is None:
                return self.dataset("train")
            if text is None:
                raise DataError(f"the plan has no data.{split}", hint=f"set data.{split}")
            ref = parse_source(text, self.base_dir)
            self._cache[split] = load_source(
                ref,
                self.layout,
                safe=self.safe,
                tokenizer=self.tokenizer,
                label_names=self.spec.label_names,
            )
        return self._cache[split]

    def has_labels(self, split: str) -> bool:
        ds = self.dataset(split)
        if isinstance(ds, NamedTensorDataset):
            return ds.target is not None
        try:
            return ds[0][1] is not None
        except (TypeError, IndexError, KeyError):
            for batch in ds:
                return batch.target is not None
        return False

    def loader(
        self,
        split: str,
        *,
        batch_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        few_shot: int | None = None,
        sampler_fn: Callable | None = None,
    ):
        ds = self.dataset(split)
        if few_shot is not None:
            ds = few_shot_subset(ds, few_shot, seed)
        size = (
            batch_size
            or (self.spec.eval_batch_size if split == "eval" else None)
            or self.spec.batch_size
        )
        sampler = sampler_fn(ds) if sampler_fn is not None else None
        return make_loader(
            ds, size, shuffle=shuffle, seed=seed, num_workers=self.spec.num_workers, sampler=sampler
        )

    def batches(self, split: str, count: int, *, seed: int = 0) -> list[Batch]:
        """The first ``count`` batches of a seeded shuffle of ``split`` (calibration sets:
        activation ranks, block influence, norm statistics, int8 ranges)."""
        loader = self.loader(split, shuffle=True, seed=seed)
        return list(itertools.islice(loader, count))

    def first_batch(self, split: str, batch_size: int) -> Batch:
        ds = self.dataset(split)
        if isinstance(ds, NamedTensorDataset) or hasattr(ds, "__getitem__"):
            n = min(batch_size, len(ds))
            return collate([ds[i] for i in range(n)])
        for batch in ds:
            return batch
        raise DataError(f"data.{split} is empty")
