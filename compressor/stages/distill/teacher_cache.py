"""Named layer outputs (forward hooks) and a cache of the teacher's outputs.

For a small training set the teacher's outputs are computed once, in dataset order, and each
training batch carries the indices of its examples, so the lookup is exact under any
shuffling. The cache lives in memory and, when a file is given, on disk (safetensors with a
fingerprint in its metadata, reused by a later run of the same plan).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Through the module: replacing safetensors' functions (tests simulating a full disk)
# must reach every writer.
import safetensors.torch
import torch
import torch.nn as nn
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from compressor.data.batches import Batch, collate
from compressor.data.padding import LengthGroupedBatches, example_lengths, token_mask, trim_padding
from compressor.files.atomic import atomic_path
from compressor.forward import call_model, primary_output

OUTPUT_KEY = "<output>"


# ------------------------------------------------------------------ layer taps


class FeatureTaps:
    """Forward hooks that keep the latest output of named modules (their primary tensor)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.names = list(dict.fromkeys(names))
        self.values: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        for name in self.names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.values[name] = primary_output(output)

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def run_with_taps(model: nn.Module, taps: FeatureTaps | None, inputs: dict[str, torch.Tensor]):
    """``(primary output, {name: layer output})`` of one forward pass."""
    if taps is not None:
        taps.values = {}
    out = primary_output(call_model(model, inputs))
    return out, (dict(taps.values) if taps is not None else {})


# ------------------------------------------------------------ indexed batches


@dataclass
class IndexedBatch(Batch):
    """A batch that also knows the dataset positions of its examples."""

    index: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> IndexedBatch:
        moved = Batch.to(self, device)
        return IndexedBatch(moved.inputs, moved.target, self.index)


class _Indexed(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        return self.dataset[i], i


def _collate_indexed(items):
    batch = collate([item for item, _ in items])
    return IndexedBatch(batch.inputs, batch.target, torch.tensor([i for _, i in items]))


def indexed_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    distributed: Any = None,
    lengths: torch.Tensor | None = None,
) -> DataLoader:
    """A deterministic loader of :class:`IndexedBatch` over a map-style dataset (under
    torchrun, ``distributed`` gives each rank its shard, reshuffled by ``set_epoch``).
    ``lengths`` (real tokens per example) makes shuffled batches group similar lengths."""
    indexed = _Indexed(dataset)
    if shuffle and lengths is not None:
        # Under torchrun every rank draws the same grouped order and takes its own batches.
        batches = LengthGroupedBatches(
            lengths,
            batch_size,
            seed=seed,
            rank=distributed.rank if distributed is not None else 0,
            world_size=distributed.world_size if distributed is not None else 1,
        )
        return DataLoader(indexed, batch_sampler=batches, collate_fn=_collate_indexed)
    sampler = None
    if distributed is not None:
        sampler = DistributedSampler(
            indexed,
            num_replicas=distributed.world_size,
            rank=distributed.rank,
            shuffle=shuffle,
            seed=seed,
        )
    return DataLoader(
        indexed,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=_collate_indexed,
    )


def is_map_style(dataset: Any) -> bool:
    return hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")


# ------------------------------------------------------------------ the cache


class TeacherCache:
    """The teacher's output and tapped layer outputs for every example, in dataset order."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def lookup(self, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        return {k: v.index_select(0, index.cpu()).to(device) for k, v in self.tensors.items()}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        teacher: nn.Module,
        taps: FeatureTaps | None,
        dataset: Dataset,
        batch_size: int,
        device: torch.device,
    ) -> TeacherCache:
        """Run the teacher once over ``dataset`` (in order)."""

        lengths = example_lengths(dataset)
        if lengths is not None:
            return cls._build_by_length(teacher, taps, dataset, lengths, batch_size, device)
        parts: dict[str, list[torch.Tensor]] = {}
        for batch in indexed_loader(dataset, batch_size, shuffle=False, seed=0):
            batch = batch.to(device)
            out, feats = run_with_taps(teacher, taps, batch.inputs)
            for key, value in {OUTPUT_KEY: out, **feats}.items():
                # float32 so that cached and live teachers train the student identically.
                parts.setdefault(key, []).append(value.detach().to("cpu", torch.float32))
        return cls({k: torch.cat(v) for k, v in parts.items()})

    @classmethod
    @torch.no_grad()
    def _build_by_length(
        cls,
        teacher: nn.Module,
        taps: FeatureTaps | None,
        dataset: Dataset,
        lengths: torch.Tensor,
        batch_size: int,
        device: torch.device,
    ) -> TeacherCache:
        """Token data: run the teacher on batches of similar length with their all-padding
        columns cut (about twice as fast on text padded to its longest sentence), and store
        every tensor in dataset order at the full padded length. Token states at padding
        positions are stored as zeros: the distillation losses leave those positions out."""

        tensors: dict[str, torch.Tensor] = {}
        order = torch.argsort(lengths, descending=True, stable=True)
        for chunk in order.split(batch_size):
            batch = collate([dataset[int(i)] for i in chunk]).to(device)
            inputs, full = trim_padding(batch.inputs)
            kept = next(iter(inputs.values())).shape[1]
            real = token_mask(inputs).cpu()
            out, feats = run_with_taps(teacher, taps, inputs)
            for key, value in {OUTPUT_KEY: out, **feats}.items():
                value = value.detach().to("cpu", torch.float32)
                if value.dim() >= 3 and value.shape[:2] == real.shape:
                    # Zero whatever sits at padding: the cache must not depend on batching.
                    value = value * real.reshape(*real.shape, *([1] * (value.dim() - 2)))
                token = full is not None and value.dim() >= 3 and value.shape[1] == kept
                if key not in tensors:
                    shape = list(value.shape[1:])
                    if token:
                        shape[0] = full
                    tensors[key] = torch.zeros(len(lengths), *shape)
                if token or value.shape[1:] != tensors[key].shape[1:]:
                    tensors[key][chunk, : value.shape[1]] = value
                else:
                    tensors[key][chunk] = value
        return cls(tensors)

    def save(self, path: Path, fingerprint: str) -> None:

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            safetensors.torch.save_file(
                {k: v.contiguous() for k, v in self.tensors.items()},
                str(tmp),
                metadata={"fingerprint": fingerprint},
            )

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> TeacherCache | None:
        """The cache stored at ``path``, or None when missing or made for something else."""

        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("fingerprint") != fingerprint:
                    return None
                return cls({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
        except Exception:  # a truncated or foreign file: rebuild rather than fail the run
            return None


def fingerprint(*parts: Any) -> str:
    """A short hash of what determines the teacher's outputs (teacher, data, layers)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def estimate_bytes(
    teacher: nn.Module, taps: FeatureTaps | None, dataset: Dataset, device: torch.device
) -> int:
    """Bytes the cache of ``dataset`` would take, from one example."""
    with torch.no_grad():
        batch = collate([dataset[0]]).to(device)
        out, feats = run_with_taps(teacher, taps, batch.inputs)
    per_example = sum(t.numel() for t in [out, *feats.values()]) * 4
    return per_example * len(dataset)  # type: ignore[arg-type]


RUN_DIR_CACHE_BYTES = 2 * 2**30
"""The largest teacher cache a run keeps in its run directory without ``cache_file``."""


def setup_cache(
    objective: Any,
    ctx: Any,
    dataset: Dataset,
    batch_size: int,
    *,
    mode: str | bool,
    file: str | None,
    source: str,
    teacher_tag: str,
    data_files: tuple[str, ...] = (),
    passes: float = float("inf"),
    auto_bytes: int = 256 * 2**20,
) -> dict[str, Any]:
    """Build (or reload) the teacher cache of ``dataset`` and give it to ``objective``.

    Without ``file``, the run directory keeps caches up to :data:`RUN_DIR_CACHE_BYTES`;
    bigger ones stay in memory only: writing 13.6 GB took longer here than the teacher pass
    that rebuilds it (about a minute for MiniLM over 23k sentences).

    Args:
        objective: has ``teacher``, ``teacher_taps``, ``pairs`` and receives ``cache``.
        mode: True, False or "auto" (cache when it takes at most ``auto_bytes``).
        file: where to keep the cache (relative to the plan); default: the run directory
            when the runner provides one (``ctx.run_dir``), else memory only.
        source, teacher_tag: what the data and teacher are, for the fingerprint.
        data_files: other data sources the stage reads (their files' stamps count too).
        passes: how many times training will see each example; "auto" does not cache for a
            single pass (the teacher would run once per example either way), unless ``file``
            asks to keep the outputs.

    Returns:
        What was done, for the stage report.
    """
    if mode is False or not is_map_style(dataset):
        return {"cache": False}
    if mode == "auto" and passes <= 1 and file is None:
        return {"cache": False}
    if mode == "auto":
        size = estimate_bytes(objective.teacher, objective.teacher_taps, dataset, ctx.device)
        if size > auto_bytes:
            return {"cache": False, "cache_bytes_needed": size}
    path = None
    in_run_dir = False
    if file is not None:
        path = Path(file) if Path(file).is_absolute() else ctx.base_dir / file
    elif getattr(ctx, "run_dir", None) is not None:
        path = Path(ctx.run_dir) / "teacher_cache" / f"stage{ctx.stage_index:02d}.safetensors"
        in_run_dir = True
    teacher = ctx.plan.teacher if teacher_tag == "plan" else teacher_tag
    # Everything the teacher's outputs depend on: a stale cache would silently mis-teach.
    key = fingerprint(
        teacher.model_dump(mode="json") if hasattr(teacher, "model_dump") else teacher,
        ctx.plan.model.model_dump(mode="json"),
        ctx.plan.data.model_dump(mode="json"),
        [c.model_dump(mode="json") for _, c in ctx.plan.stage_list()[: ctx.stage_index + 1]],
        _file_stamp(ctx, ctx.plan.model),
        _file_stamp(ctx, teacher),
        [_file_stamp(ctx, f) for f in (ctx.plan.data.train, *data_files) if f],
        source,
        len(dataset),
        ctx.stage_seed(),
        [p[2] for p in objective.pairs],  # type: ignore[arg-type]
    )
    cache = TeacherCache.load(path, key) if path is not None else None
    reused = cache is not None
    if cache is None:
        cache = TeacherCache.build(
            objective.teacher, objective.teacher_taps, dataset, batch_size, ctx.device
        )
        if in_run_dir and cache.nbytes > RUN_DIR_CACHE_BYTES:
            path = None  # memory only: rebuilding it on resume is cheaper than writing it
        if path is not None and ctx.is_main_process:
            cache.save(path, key)
    objective.cache = cache
    return {
        "cache": True,
        "cache_bytes": cache.nbytes,
        "cache_reused": reused,
        "cache_file": str(path) if path is not None else None,
    }


def _file_stamp(ctx: Any, spec: Any) -> list[Any] | None:
    """Size and modification time of the file behind a model spec or a data-source string
    (a retrained checkpoint or rewritten data file must not reuse an old cache)."""
    if isinstance(spec, str):
        where = spec.partition("?")[0]
    else:
        where = getattr(spec, "checkpoint", None) or getattr(spec, "hf", None)
    if not where:
        return None
    path = Path(where) if Path(where).is_absolute() else ctx.base_dir / where
    try:
        stat = path.stat()
    except OSError:
        return None  # not a file (a built-in or 'module:function' source)
    return [stat.st_size, stat.st_mtime_ns]
