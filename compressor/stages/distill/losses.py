"""Distillation losses: logit KD, hidden-state matching and the cross-correlation objective,
and :class:`DistillObjective`, their weighted sum as the distill stage trains on it.

Every loss function takes plain tensors and returns a scalar tensor, so each can be checked on
hand-computed small inputs. Feature maps of any rank are first turned into rows of features
with :func:`feature_rows` (one row per example, token or pixel).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from compressor.data.padding import real_rows, token_mask, trim_padding, trim_tensor
from compressor.errors import StageError
from compressor.forward import is_causal_lm
from compressor.patterns import resolve_modules
from compressor.spec.base import StrictModel, number_as_weight
from compressor.stages.distill.teacher_cache import (
    OUTPUT_KEY,
    FeatureTaps,
    IndexedBatch,
    TeacherCache,
    run_with_taps,
)
from compressor.training.loop import task_loss


def feature_rows(x: torch.Tensor) -> torch.Tensor:
    """Reshape a representation to ``(rows, features)``.

    ``(B, D)`` stays as is; ``(B, N, D)`` (tokens) becomes ``(B*N, D)``; ``(B, C, H, W)`` and
    other conv maps with channels on axis 1 become ``(B*H*W, C)``; ``(B,)`` becomes ``(B, 1)``.
    """
    x = x.float()
    if x.dim() == 1:
        return x.unsqueeze(1)
    if x.dim() == 2:
        return x
    if x.dim() == 3:
        return x.reshape(-1, x.shape[-1])
    # Conv maps put channels on axis 1: move them last so each pixel is one row.
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton's logit distillation: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, batch mean.

    The ``T²`` factor keeps the gradient scale independent of the temperature, so the KD
    weight means the same at any ``T``. Logits of shape ``(..., classes)`` are flattened to
    rows, so token-level outputs work too.
    """
    if temperature <= 0:
        raise StageError(f"temperature must be positive, got {temperature}")
    s = student.float().reshape(-1, student.shape[-1]) / temperature
    t = teacher.float().reshape(-1, teacher.shape[-1]) / temperature
    kl = F.kl_div(
        F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True
    )
    return kl * temperature**2


def output_match_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: Literal["mse", "cosine"]
) -> torch.Tensor:
    """Match real-valued outputs (embeddings, regressions) where a softmax makes no sense."""
    return hidden_loss(
        student.reshape(student.shape[0], -1), teacher.reshape(teacher.shape[0], -1), kind
    )


def hidden_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: Literal["mse", "cosine"] = "mse"
) -> torch.Tensor:
    """Hidden-state matching on ``(rows, features)``: mean squared error or ``1 - cosine``."""
    if student.shape != teacher.shape:
        raise StageError(
            f"hidden-state matching needs equal shapes, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}",
            hint="widths differ after pruning: project the student first (done automatically "
            "by the distill stage)",
        )
    s, t = student.float(), teacher.float()
    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()
    raise StageError(f"unknown hidden loss {kind!r}", hint="use mse or cosine")


def batch_normalize(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Standardise each feature over the batch (mean 0, population std 1, no affine).

    A constant feature stays all-zero rather than dividing by ~0.
    """
    z = z.float()
    centred = z - z.mean(dim=0, keepdim=True)
    std = centred.pow(2).mean(dim=0, keepdim=True).sqrt()
    return centred / std.clamp_min(eps)


def cross_correlation_matrix(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``C = zs^T zt / N`` of batch-normalised ``(N, D)`` features: the correlation of each
    student feature with each teacher feature over the batch."""
    if student.shape != teacher.shape:
        raise StageError(
            f"cross-correlation needs features of equal shape, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    if student.shape[0] < 2:
        raise StageError(
            "cross-correlation needs a batch of at least 2 rows", hint="raise the batch size"
        )
    zs, zt = batch_normalize(student), batch_normalize(teacher)
    return zs.T @ zt / student.shape[0]


def cross_correlation_loss(
    student: torch.Tensor, teacher: torch.Tensor, lambda_offdiag: float = 5e-3
) -> torch.Tensor:
    """The cross-correlation (Barlow Twins) objective between two representations.

    ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``: each student feature should be
    perfectly correlated with the matching teacher feature and uncorrelated with the others.
    Teacher features that are constant over the batch carry no signal and are left out of the
    diagonal term, so identical (batch-normalised) features give exactly zero.
    """
    s_rows, t_rows = feature_rows(student), feature_rows(teacher)
    c = cross_correlation_matrix(s_rows, t_rows)
    diagonal = torch.diagonal(c)
    live = (t_rows - t_rows.mean(dim=0, keepdim=True)).abs().amax(dim=0) > 0
    on = (1.0 - diagonal[live]).pow(2).sum()
    off = c.pow(2).sum() - diagonal.pow(2).sum()
    return on + lambda_offdiag * off


def fit_projection(student: torch.Tensor, teacher: torch.Tensor) -> nn.Linear:
    """A linear map from student to teacher features, fit by least squares.

    Used when a pruned student is narrower than its teacher: starting from the best linear fit
    (rather than a random map) means the matching loss measures what the student lost, not
    how badly a random projection fits.
    """
    s, t = feature_rows(student).detach(), feature_rows(teacher).detach()
    proj = nn.Linear(s.shape[1], t.shape[1])
    weight, bias = lstsq_affine(s, t)
    with torch.no_grad():
        proj.weight.copy_(weight)
        proj.bias.copy_(bias)
    return proj


def lstsq_affine(s: torch.Tensor, t: torch.Tensor, ridge: float = 1e-5):
    """``(W, b)`` minimising ``||s W^T + b - t||² + ridge·||W||²`` (ridge keeps it stable
    when a batch has fewer rows than features)."""
    s, t = s.double().cpu(), t.double().cpu()
    s_mean, t_mean = s.mean(0), t.mean(0)
    sc, tc = s - s_mean, t - t_mean
    gram = sc.T @ sc + ridge * len(s) * torch.eye(s.shape[1], dtype=s.dtype)
    weight = torch.linalg.solve(gram, sc.T @ tc).T
    bias = t_mean - weight @ s_mean
    return weight.float(), bias.float()


# ------------------------------------------------------------- loss options


class LayerPair(StrictModel):
    """A student layer and the teacher layer it should match (a bare string: same name)."""

    student: str
    teacher: str | None = Field(None, description="Default: the student's name.")

    @model_validator(mode="before")
    @classmethod
    def _string_is_both(cls, value: Any) -> Any:
        return {"student": value} if isinstance(value, str) else value


class HiddenConfig(StrictModel):
    layers: list[LayerPair] = Field(min_length=1, description="Layer outputs to match.")
    loss: Literal["mse", "cosine"] = "mse"
    weight: float = Field(1.0, ge=0)


class CrossCorrelationConfig(StrictModel):
    """sum_i (1 - C_ii)^2 + lambda_offdiag * sum_{i!=j} C_ij^2; a bare number sets weight."""

    weight: float = Field(0.01, ge=0)
    lambda_offdiag: float = Field(5e-3, ge=0)
    layer: LayerPair | None = Field(None, description="Default: the model's output.")

    @model_validator(mode="before")
    @classmethod
    def _number_is_weight(cls, value: Any) -> Any:
        return number_as_weight(value)


# ------------------------------------------------------------- the objective


class DistillObjective:
    """The weighted distillation loss of one stage, with its layer taps and projections.

    ``cfg`` is a :class:`~compressor.stages.distill.config.DistillConfig`. Called as
    ``(student, batch) -> (loss, logs)``, the loss function of the training loop. The teacher's
    outputs come from the cache when one is set and the batch carries example indices.
    """

    def __init__(
        self, cfg: Any, student: nn.Module, teacher: nn.Module, ctx: Any, has_labels: bool
    ):
        self.cfg, self.teacher, self.device = cfg, teacher, ctx.device
        self.kd_kind = cfg.kd_loss
        if self.kd_kind == "auto":
            by_metric = {"cosine": "cosine", "spearman": "cosine", "mse": "mse"}
            self.kd_kind = by_metric.get(ctx.plan.data.metric, "kl")
        self.task_weight = (1.0 if has_labels else 0.0) if cfg.task == "auto" else float(cfg.task)
        if self.task_weight > 0 and not has_labels:
            raise StageError(
                "task > 0 needs labelled data, and this data has no labels",
                hint="set task: 0 (or auto) for unlabelled or synthetic data",
            )
        # (key, student layer, teacher layer) for every matched representation.
        self.pairs: list[tuple[str, str, str]] = []
        if cfg.hidden is not None:
            for pair in cfg.hidden.layers:
                self.pairs += [
                    (f"hidden{len(self.pairs) + i}", s, t)
                    for i, (s, t) in enumerate(_resolve_pair(pair, student, teacher))
                ]
        if cfg.cross_correlation is not None and cfg.cross_correlation.layer is not None:
            resolved = _resolve_pair(cfg.cross_correlation.layer, student, teacher)
            if len(resolved) != 1:
                raise StageError("cross_correlation.layer must name exactly one layer")
            self.pairs.append(("cc", *resolved[0]))
        self.projections = nn.ModuleDict()
        self.student_taps: FeatureTaps | None = None
        self.teacher_taps = (
            FeatureTaps(teacher, [t for _, _, t in self.pairs]) if self.pairs else None
        )
        self.cache: TeacherCache | None = None
        self.calibration: IndexedBatch | None = None
        self.attach(student)

    def attach(self, student: nn.Module) -> None:
        """(Re)register the student's taps: pruning may replace modules."""
        if self.student_taps is not None:
            self.student_taps.close()
        self.student_taps = (
            FeatureTaps(student, [s for _, s, _ in self.pairs]) if self.pairs else None
        )

    def close(self) -> None:
        for taps in (self.student_taps, self.teacher_taps):
            if taps is not None:
                taps.close()

    def parameters(self) -> list[nn.Parameter]:
        """The projections' current parameters (pruning may replace them: call again)."""
        return list(self.projections.parameters())

    def teacher_outputs(
        self, batch: Any, inputs: dict[str, torch.Tensor] | None = None, full: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The teacher's output and tapped features for ``batch``: from the cache when it has
        them, else by running the teacher on ``inputs`` (default: the batch's). ``full``: the
        batch's length before :func:`trim_padding`, so cached token tensors are cut to match."""
        inputs = batch.inputs if inputs is None else inputs
        index = getattr(batch, "index", None)
        if self.cache is not None and index is not None:
            found = self.cache.lookup(index, self.device)
            if full is not None:
                keep = next(iter(inputs.values())).shape[1]
                found = {k: trim_tensor(v, full, keep) for k, v in found.items()}
            return found.pop(OUTPUT_KEY), found
        with torch.no_grad():
            return run_with_taps(self.teacher, self.teacher_taps, inputs)

    @torch.no_grad()
    def fit_projections(self, student: nn.Module) -> list[str]:
        """Fit (or refit, after pruning) a projection for every pair whose widths differ.

        The least-squares fit on a calibration batch is the best linear map from the student's
        features to the teacher's, so training starts from what the student can express.
        Returns the keys of the projections (re)made; ``parameters`` then lists the new ones.
        """
        if self.calibration is None or not self.pairs:
            return []
        was_training = student.training
        student.eval()
        _, s_feats = run_with_taps(student, self.student_taps, self.calibration.inputs)
        _, t_feats = self.teacher_outputs(self.calibration)
        student.train(was_training)
        changed = []
        mask = token_mask(self.calibration.inputs)
        for key, s_name, t_name in self.pairs:
            s_rows, t_rows = _paired_rows(key, s_feats[s_name], t_feats[t_name], mask)
            existing = dict(self.projections.items()).get(key)
            width = s_rows.shape[1]
            if (existing.in_features if existing is not None else t_rows.shape[1]) == width:
                continue  # still fits: keep what it learned
            self.projections[key] = fit_projection(s_rows, t_rows).to(self.device)
            changed.append(key)
        return changed

    def _rows(self, key: str, s_feat: torch.Tensor, t_feat: torch.Tensor, mask=None):
        """Row matrices of a matched pair (the student's projected), real tokens only."""
        s_rows, t_rows = _paired_rows(key, s_feat, t_feat, mask)
        if key in self.projections:
            s_rows = self.projections[key](s_rows)
        return s_rows, t_rows

    def __call__(self, student: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        # Columns that are padding in every row change no real token's output: cut them (a
        # length-grouped batch is then about as long as its sentences).
        inputs, full = trim_padding(batch.inputs)
        mask = token_mask(inputs)
        s_out, s_feats = run_with_taps(student, self.student_taps, inputs)
        t_out, t_feats = self.teacher_outputs(batch, inputs, full)
        if s_out.shape != t_out.shape:
            raise StageError(
                f"the student's output has shape {tuple(s_out.shape)}, the teacher's "
                f"{tuple(t_out.shape)}: distillation needs the same output space",
                hint="use a teacher with the same outputs (classes, embedding width)",
            )
        terms: list[tuple[str, float, torch.Tensor]] = []
        if cfg.kd > 0:
            s_kd, t_kd = s_out, t_out
            if mask is not None and s_out.dim() >= 3 and s_out.shape[:2] == mask.shape:
                s_kd, t_kd = s_out[mask], t_out[mask]  # token outputs: real tokens only
            if self.kd_kind == "kl":
                kd = kd_loss(s_kd, t_kd, cfg.temperature)
            else:
                kd = output_match_loss(s_kd, t_kd, self.kd_kind)
            terms.append(("kd", cfg.kd, kd))
        if self.task_weight > 0 and batch.target is not None:
            task = task_loss(s_out, batch.target, causal=is_causal_lm(student))
            terms.append(("task", self.task_weight, task))
        hidden = [
            self._rows(k, s_feats[s], t_feats[t], mask) for k, s, t in self.pairs if k != "cc"
        ]
        if hidden:
            value = torch.stack([hidden_loss(s, t, cfg.hidden.loss) for s, t in hidden]).mean()
            terms.append(("hidden", cfg.hidden.weight, value))
        if cfg.cross_correlation is not None:
            cc = cfg.cross_correlation
            cc_pair = next(((k, s, t) for k, s, t in self.pairs if k == "cc"), None)
            if cc_pair is None:
                s_rows, t_rows = s_out, t_out
            else:
                s_rows, t_rows = self._rows("cc", s_feats[cc_pair[1]], t_feats[cc_pair[2]], mask)
            terms.append(
                ("cc", cc.weight, cross_correlation_loss(s_rows, t_rows, cc.lambda_offdiag))
            )
        if not terms:
            raise StageError(
                "the distillation objective is empty (every weight is 0)",
                hint="set kd, hidden, cross_correlation or task above 0",
            )
        total = sum(w * v for _, w, v in terms)
        return total, {name: float(v.detach()) for name, _, v in terms}


def _paired_rows(key: str, s_feat: torch.Tensor, t_feat: torch.Tensor, mask: Any):
    """``(rows, features)`` of a student and a teacher layer, real tokens only.

    Raises:
        StageError: the layers have different numbers of positions (a conv map paired with
            a pooled layer, say), which no projection can bridge.
    """
    s_rows, t_rows = feature_rows(s_feat), feature_rows(t_feat)
    if s_rows.shape[0] != t_rows.shape[0]:
        raise StageError(
            f"cannot match student and teacher layers ({key}): shapes "
            f"{tuple(s_feat.shape)} and {tuple(t_feat.shape)}",
            hint="match layers with the same number of positions (tokens, pixels)",
        )
    return real_rows(s_rows, t_rows, mask)


def _resolve_pair(pair: Any, student: nn.Module, teacher: nn.Module):
    """``[(student name, teacher name)]`` for a layer pair (exact names or ``re:`` patterns)."""
    s_names = resolve_modules(student, pair.student, "distill student layer")
    t_names = resolve_modules(teacher, pair.teacher or pair.student, "distill teacher layer")
    if len(s_names) != len(t_names):
        raise StageError(
            f"layer patterns match {len(s_names)} student and {len(t_names)} teacher modules",
            hint="give patterns that match the same number of layers, paired in order",
        )
    return list(zip(s_names, t_names, strict=True))
