"""Aligned weight regularisation: keep the units that survive pruning close to their
pretrained selves.

Pruning a pretrained model and then training it on one task tends to move the surviving
weights far from what made the model transfer. This term pulls each kept unit back towards
its pretrained weights, in value (a relative L2 distance) and in direction (one minus the
cosine of each unit's weight row), so that what transfers survives (O'Neill 2022).

To compare a pruned tensor with its pretrained one we need the pretrained weights of exactly
the units that were kept. They come from the structural-edit history (``ctx.history``: entries
``{"module": name, "dim": "out"|"in", "kept": [...]}``, composed in order). Where the history
does not explain a shape, a tensor pruned along one axis only is matched unit by unit to its
nearest pretrained unit (cosine), which is exact right after pruning because the engine copies
the kept slices unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch.nn.parallel import DistributedDataParallel

from compressor.errors import StageError
from compressor.patterns import matches
from compressor.spec.base import StrictModel, number_as_weight

REGULARISED_TYPES = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)


class AlignedConfig(StrictModel):
    """``aligned:`` on finetune and distill; a bare number sets ``weight``."""

    weight: float = Field(1.0, ge=0, description="Multiplier of the whole aligned term.")
    l2: float = Field(
        1.0, ge=0, description="Weight of the relative L2 distance to the pretrained weights."
    )
    cosine: float = Field(
        1.0,
        ge=0,
        description="Weight of 1 - cosine between each unit's weights and its pretrained weights.",
    )
    modules: list[str] = Field(
        default_factory=list,
        description="Module names or 're:' patterns to regularise (default: every Linear, "
        "Conv and Embedding).",
    )

    @model_validator(mode="before")
    @classmethod
    def _number_is_weight(cls, value: Any) -> Any:
        return number_as_weight(value)


def _is_ddp(model: nn.Module) -> bool:

    return isinstance(model, DistributedDataParallel)


def _axes(module: nn.Module) -> tuple[int, int | None]:
    """(weight axis of output units, weight axis of input units) for ``module``."""
    if isinstance(module, nn.Embedding):
        return 1, None  # its "output" is the embedding width
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return 1, 0
    return 0, 1


def kept_indices(history: Sequence[dict[str, Any]]) -> dict[tuple[str, str], torch.Tensor]:
    """Compose the history into ``(module, "out"|"in") -> original indices still present``.

    Each edit's indices are positions in the tensor as it was at that edit, so a second edit
    of the same axis selects among the survivors of the first.
    """
    kept: dict[tuple[str, str], torch.Tensor] = {}
    for entry in history:
        name = entry.get("module")
        dim = {0: "out", 1: "in"}.get(entry.get("dim"), entry.get("dim"))
        idx = entry.get("kept", entry.get("indices"))
        if not isinstance(name, str) or dim not in ("out", "in") or idx is None:
            continue  # other kinds of edits (merges, replacements) do not slice units
        idx = torch.as_tensor(list(idx), dtype=torch.long)
        prev = kept.get((name, dim))
        kept[(name, dim)] = prev[idx] if prev is not None else idx
    return kept


def match_units(current: torch.Tensor, reference: torch.Tensor, axis: int) -> torch.Tensor | None:
    """Indices into ``reference`` along ``axis`` of the units of ``current`` (greedy nearest
    by cosine, each reference unit used once, kept in ascending order as pruning keeps them).
    None when the other axes differ."""
    cur = current.detach().movedim(axis, 0).flatten(1).float().cpu()
    ref = reference.detach().movedim(axis, 0).flatten(1).float().cpu()
    if cur.shape[1] != ref.shape[1] or len(cur) > len(ref):
        return None
    sim = F.normalize(cur, dim=1) @ F.normalize(ref, dim=1).T
    chosen: list[int] = []
    taken = torch.zeros(len(ref), dtype=torch.bool)
    for row in sim.max(dim=1).values.argsort(descending=True).tolist():
        scores = sim[row].masked_fill(taken, -2.0)
        j = int(scores.argmax())
        taken[j] = True
        chosen.append(j)
    return torch.as_tensor(sorted(chosen), dtype=torch.long)


@dataclass
class _Reference:
    name: str
    weight: torch.Tensor
    bias: torch.Tensor | None


def _select(tensor: torch.Tensor, axis: int, idx: torch.Tensor | None) -> torch.Tensor:
    return tensor if idx is None else tensor.index_select(axis, idx.to(tensor.device))


class AlignedRegularizer:
    """The aligned term for one student and its pretrained reference.

    Args:
        cfg: the ``aligned:`` options.
        reference: the pretrained model (``ctx.original``), never modified.
        history: returns the current structural-edit history (entries after the reference
            was taken), so the references follow further pruning.
    """

    def __init__(
        self,
        cfg: AlignedConfig,
        reference: nn.Module,
        history: Callable[[], Sequence[dict[str, Any]]] = list,
    ):
        self.cfg = cfg
        self.reference = reference
        self.history = history
        self.refs: list[_Reference] = []
        self.unmatched: list[str] = []

    @classmethod
    def from_context(cls, cfg: AlignedConfig, ctx: Any) -> AlignedRegularizer:
        """Regularise towards ``ctx.original`` using the edits made since it was loaded."""
        if ctx.original is None:
            raise StageError("aligned regularisation needs the original (pretrained) model")
        skip = len(getattr(ctx.loaded, "history", []) or [])
        return cls(cfg, ctx.original, lambda: list(ctx.history)[skip:])

    def _selected(self, name: str) -> bool:
        return not self.cfg.modules or any(matches(p, name) for p in self.cfg.modules)

    def attach(self, model: nn.Module) -> dict[str, Any]:
        """(Re)build the pretrained reference of every kept unit; call after pruning."""
        kept = kept_indices(self.history())
        ref_modules = dict(self.reference.named_modules())
        self.refs, self.unmatched = [], []
        for name, module in model.named_modules():
            if not isinstance(module, REGULARISED_TYPES) or not self._selected(name):
                continue
            ref = ref_modules.get(name)
            if not isinstance(ref, type(module)):
                self.unmatched.append(name)
                continue
            out_axis, in_axis = _axes(module)
            out_idx = kept.get((name, "out"))
            w0 = _select(ref.weight.detach(), out_axis, out_idx)
            if in_axis is not None:
                w0 = _select(w0, in_axis, kept.get((name, "in")))
            if w0.shape != module.weight.shape:
                w0, out_idx = self._match(module.weight, w0, out_axis, in_axis, out_idx)
            if w0 is None:
                self.unmatched.append(name)
                continue
            b0 = None
            if getattr(module, "bias", None) is not None and getattr(ref, "bias", None) is not None:
                b0 = _select(ref.bias.detach(), 0, out_idx)
                if b0.shape != module.bias.shape:
                    b0 = None
            device = module.weight.device
            self.refs.append(
                _Reference(
                    name, w0.to(device).clone(), None if b0 is None else b0.to(device).clone()
                )
            )
        if not self.refs:
            raise StageError(
                "aligned regularisation found no module to align with the pretrained model",
                hint="check aligned.modules (names or 're:' patterns of Linear/Conv/Embedding)",
            )
        return {"aligned_modules": len(self.refs), "unmatched": list(self.unmatched)}

    @staticmethod
    def _match(weight, w0, out_axis, in_axis, out_idx):
        """Infer kept units along the one axis whose size differs (no history for it)."""
        differ = [a for a in range(weight.dim()) if weight.shape[a] != w0.shape[a]]
        if len(differ) != 1 or differ[0] not in (out_axis, in_axis):
            return None, out_idx
        idx = match_units(weight, w0, differ[0])
        if idx is None:
            return None, out_idx
        if differ[0] == out_axis:
            out_idx = idx if out_idx is None else out_idx[idx]
        return w0.index_select(differ[0], idx), out_idx

    def __call__(self, model: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        """``weight * (l2 * relative L2 + cosine * mean(1 - cos))`` over the kept units."""
        model = getattr(model, "module", model) if _is_ddp(model) else model
        if not self.refs:
            self.attach(model)
        modules = dict(model.named_modules())
        if any(
            modules.get(r.name) is None or modules[r.name].weight.shape != r.weight.shape
            for r in self.refs
        ):
            self.attach(model)  # the structure changed since the last attach
            modules = dict(model.named_modules())
        l2_terms, cos_terms = [], []
        for ref in self.refs:
            module = modules[ref.name]
            w = module.weight
            scale = ref.weight.pow(2).sum().clamp_min(1e-12)
            l2_terms.append((w - ref.weight).pow(2).sum() / scale)
            if ref.bias is not None:
                diff = (module.bias - ref.bias).pow(2).sum()
                l2_terms.append(diff / ref.bias.pow(2).sum().clamp_min(1e-12))
            cos = F.cosine_similarity(w.flatten(1), ref.weight.flatten(1), dim=1, eps=1e-8)
            cos_terms.append(1.0 - cos)
        l2 = torch.stack(l2_terms).mean()
        cosine = torch.cat(cos_terms).mean()
        total = self.cfg.weight * (self.cfg.l2 * l2 + self.cfg.cosine * cosine)
        return total, {"aligned_l2": float(l2.detach()), "aligned_cosine": float(cosine.detach())}
