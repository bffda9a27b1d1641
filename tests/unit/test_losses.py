"""Each distillation loss on small tensors whose value is computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from compressor.errors import StageError
from compressor.stages.distill.losses import (
    batch_normalize,
    cross_correlation_loss,
    cross_correlation_matrix,
    feature_rows,
    fit_projection,
    hidden_loss,
    kd_loss,
)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _softmax(x: list[float]) -> list[float]:
    e = [math.exp(v) for v in x]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_hand_computed_kl_at_temperature_one():
    # Teacher probabilities 3/4, 1/4 against a uniform student: KL = 0.75 ln 1.5 + 0.25 ln 0.5.
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_loss(student, teacher, temperature=1.0).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_softens_with_temperature_and_scales_by_t_squared():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 1.0]])
    t = 2.0
    expected = (
        sum(
            _kl(_softmax([v / t for v in tr]), _softmax([v / t for v in sr]))
            for sr, tr in zip(student.tolist(), teacher.tolist(), strict=True)
        )
        / 2
        * t**2
    )  # batch mean, times T²
    assert kd_loss(student, teacher, temperature=t).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_for_identical_logits_and_flattens_tokens():
    logits = torch.randn(2, 5, 7)
    assert kd_loss(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # (B, N, C) is the mean over B*N rows, the same as flattening first.
    other = torch.randn(2, 5, 7)
    assert kd_loss(logits, other).item() == pytest.approx(
        kd_loss(logits.reshape(10, 7), other.reshape(10, 7)).item(), rel=1e-6
    )


def test_kd_loss_rejects_non_positive_temperature():
    with pytest.raises(StageError):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature=0.0)


def test_hidden_mse_and_cosine_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 4.0]])
    # MSE: ((1)^2 + (1)^2 + 0 + (2)^2) / 4 = 1.5
    assert hidden_loss(s, t, "mse").item() == pytest.approx(1.5)
    # cosine: row 1 orthogonal (1 - 0), row 2 parallel (1 - 1) -> mean 0.5
    assert hidden_loss(s, t, "cosine").item() == pytest.approx(0.5)
    with pytest.raises(StageError, match="equal shapes"):
        hidden_loss(s, t[:, :1], "mse")


def test_feature_rows_puts_channels_last():
    conv = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    rows = feature_rows(conv)
    assert rows.shape == (8, 3)
    assert rows[0].tolist() == conv[0, :, 0, 0].tolist()  # one pixel's channels
    assert feature_rows(torch.zeros(2, 5, 4)).shape == (10, 4)
    assert feature_rows(torch.zeros(6)).shape == (6, 1)


def test_batch_normalize_standardises_and_keeps_constant_features_finite():
    z = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    n = batch_normalize(z)
    assert n[:, 0].tolist() == pytest.approx([-1.0, 1.0])
    assert n[:, 1].tolist() == [0.0, 0.0]


def test_cross_correlation_matrix_by_hand():
    s = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    t = torch.tensor([[1.0, -1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    # Feature 0 equal (corr 1); feature 1 negated (corr -1); cross terms uncorrelated (0).
    c = cross_correlation_matrix(s, t)
    assert c.tolist() == [[1.0, 0.0], [0.0, -1.0]]
    # (1 - 1)^2 + (1 - (-1))^2 = 4, and no off-diagonal mass.
    assert cross_correlation_loss(s, t, lambda_offdiag=0.5).item() == pytest.approx(4.0)


def test_cross_correlation_off_diagonal_term_by_hand():
    s = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # both features identical
    t = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    # C is all ones: diagonal term 0, off-diagonal 2 entries of 1 -> lambda * 2.
    assert cross_correlation_loss(s, t, lambda_offdiag=0.25).item() == pytest.approx(0.5)


def test_cross_correlation_is_zero_for_identical_batch_normalised_features():
    torch.manual_seed(0)
    # Decorrelated features (orthogonal columns after centring): C is exactly the identity.
    raw = torch.randn(64, 6)
    q, _ = torch.linalg.qr(raw - raw.mean(0))
    features = batch_normalize(q)
    assert cross_correlation_loss(features, features.clone(), 5e-3).item() == pytest.approx(
        0.0, abs=1e-6
    )
    # Any identical features give a zero diagonal term (lambda 0), scale and shift aside.
    z = torch.randn(32, 5)
    assert cross_correlation_loss(3 * z + 1, z, lambda_offdiag=0.0).item() == pytest.approx(
        0.0, abs=1e-5
    )
    # A dead (constant) teacher unit carries no signal and adds nothing.
    dead = features.clone()
    dead[:, 0] = 0.0
    assert cross_correlation_loss(dead, dead, 0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_cross_correlation_grows_as_student_decorrelates():
    torch.manual_seed(0)
    teacher = torch.randn(256, 8)
    noise = torch.randn(256, 8)
    losses = [
        cross_correlation_loss(math.sqrt(1 - a * a) * teacher + a * noise, teacher, 5e-3).item()
        for a in (0.0, 0.3, 0.6, 0.9, 1.0)
    ]
    assert losses == sorted(losses)
    assert losses[-1] > 5.0  # unrelated features: every diagonal term near 1
    assert losses[0] < 0.1


def test_cross_correlation_rejects_a_single_row_and_unequal_widths():
    with pytest.raises(StageError, match="at least 2"):
        cross_correlation_loss(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(StageError, match="equal shape"):
        cross_correlation_loss(torch.zeros(4, 3), torch.zeros(4, 2))


def test_cross_correlation_has_gradient_towards_the_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(64, 4)
    student = (0.5 * teacher + torch.randn(64, 4)).requires_grad_(True)
    before = cross_correlation_loss(student, teacher).item()
    opt = torch.optim.Adam([student], lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        cross_correlation_loss(student, teacher).backward()
        opt.step()
    assert cross_correlation_loss(student, teacher).item() < 0.2 * before


def test_fit_projection_recovers_a_linear_map():
    torch.manual_seed(0)
    s = torch.randn(200, 3)
    w = torch.randn(5, 3)
    t = s @ w.T + 0.5
    proj = fit_projection(s, t)
    assert proj.in_features == 3 and proj.out_features == 5
    assert torch.allclose(proj(s), t, atol=1e-2)
