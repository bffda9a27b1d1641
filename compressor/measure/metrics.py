"""Quality metrics, computed over a whole evaluation set.

A metric sees the model's primary outputs, the labels (when the data has them) and the
teacher's outputs (for fidelity metrics such as ``cosine``), concatenated over the set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compressor.errors import DataError
from compressor.measure.lm_metrics import (
    agreement_from_compact,
    compact_argmax,
    compact_nll,
    perplexity_from_compact,
)


@dataclass(frozen=True)
class MetricDef:
    name: str
    higher_is_better: bool
    needs_labels: bool
    needs_teacher: bool
    fn: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], float]
    description: str
    # Applied to each batch's outputs (the model's and the teacher's) before they are kept:
    # language-model metrics shrink (N, T, vocab) logits to (N, T) so a whole evaluation set
    # fits in memory. ``fn`` then sees the concatenated compact tensors.
    compact: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None

    def keep(self, output: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """What to keep of one batch's output for this metric."""
        output = output.detach().float()
        return (self.compact(output, target) if self.compact else output).cpu()


def _accuracy(out: torch.Tensor, target: torch.Tensor | None, _t: torch.Tensor | None) -> float:
    return (out.argmax(dim=-1) == target).float().mean().item()


def _top5(out: torch.Tensor, target: torch.Tensor | None, _t: torch.Tensor | None) -> float:
    k = min(5, out.shape[-1])
    top = out.topk(k, dim=-1).indices
    return (top == target.unsqueeze(-1)).any(dim=-1).float().mean().item()


def _mse(out: torch.Tensor, target: torch.Tensor | None, _t: torch.Tensor | None) -> float:
    return F.mse_loss(out.float(), target.float().reshape(out.shape)).item()


def _cosine(out: torch.Tensor, _y: torch.Tensor | None, teacher: torch.Tensor | None) -> float:
    a = out.float().reshape(out.shape[0], -1)
    b = teacher.float().reshape(teacher.shape[0], -1)
    return F.cosine_similarity(a, b, dim=-1).mean().item()


def _rank(x: torch.Tensor) -> torch.Tensor:
    # Average ranks are not needed: similarities of real embeddings practically never tie.
    order = x.argsort()
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors."""
    ra, rb = _rank(a.flatten()), _rank(b.flatten())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()).clamp_min(1e-12))


def pairwise_similarity_spearman(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """Spearman correlation between the two models' pairwise cosine-similarity matrices."""
    s = F.normalize(student.float().reshape(student.shape[0], -1), dim=-1)
    t = F.normalize(teacher.float().reshape(teacher.shape[0], -1), dim=-1)
    iu = torch.triu_indices(len(s), len(s), offset=1)
    return spearman((s @ s.T)[iu[0], iu[1]], (t @ t.T)[iu[0], iu[1]])


def _spearman(out: torch.Tensor, _y: torch.Tensor | None, teacher: torch.Tensor | None) -> float:
    return pairwise_similarity_spearman(out, teacher)


METRICS: dict[str, MetricDef] = {
    m.name: m
    for m in (
        MetricDef("accuracy", True, True, False, _accuracy, "share of correct top-1 classes"),
        MetricDef("top5", True, True, False, _top5, "share of labels among the top 5 classes"),
        MetricDef("mse", False, True, False, _mse, "mean squared error to the targets"),
        MetricDef("cosine", True, False, True, _cosine, "mean cosine similarity to the teacher"),
        MetricDef(
            "spearman",
            True,
            False,
            True,
            _spearman,
            "Spearman correlation of pairwise similarities with the teacher's",
        ),
        # Causal LMs: outputs are (N, T, vocab) logits, labels the (N, T) token ids.
        MetricDef(
            "perplexity",
            False,
            True,
            False,
            perplexity_from_compact,
            "exp of the mean next-token loss on the evaluation text",
            compact_nll,
        ),
        MetricDef(
            "next_token_agreement",
            True,
            False,
            True,
            agreement_from_compact,
            "share of positions whose greedy next token equals the teacher's",
            compact_argmax,
        ),
    )
}


def get_metric(name: str) -> MetricDef:
    try:
        return METRICS[name]
    except KeyError:
        raise DataError(
            f"unknown metric {name!r}", hint=f"use one of: {', '.join(METRICS)}"
        ) from None


def compute_metric(
    metric: MetricDef,
    outputs: Iterable[torch.Tensor],
    targets: Iterable[torch.Tensor | None],
    teacher_outputs: Iterable[torch.Tensor] | None = None,
    *,
    kept: bool = False,
) -> float:
    """Compute ``metric`` over concatenated per-batch outputs, targets and teacher outputs.

    ``kept``: the outputs are already what :meth:`MetricDef.keep` keeps of each batch (an
    evaluation loop that streams keeps only that); otherwise each batch is compacted here.
    """
    target_list = list(targets)
    present = [t for t in target_list if t is not None]
    if metric.needs_labels and not present:
        raise DataError(
            f"metric {metric.name!r} needs labels but the evaluation data has none",
            hint="use labelled eval data, or metric: cosine (fidelity to the teacher)",
        )
    if metric.needs_teacher and teacher_outputs is None:
        raise DataError(f"metric {metric.name!r} needs a teacher", hint="set teacher: original")

    def gathered(batches: Iterable[torch.Tensor]) -> torch.Tensor:
        batches = list(batches)
        if kept:
            return torch.cat([b.float().cpu() for b in batches])
        labels = target_list if len(target_list) == len(batches) else [None] * len(batches)
        return torch.cat([metric.keep(b, t) for b, t in zip(batches, labels, strict=True)])

    out = gathered(outputs)
    target = torch.cat([t.cpu() for t in present]) if present else None
    teacher = gathered(teacher_outputs) if teacher_outputs is not None else None
    return float(metric.fn(out, target, teacher))
