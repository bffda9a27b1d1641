"""How alike two weight tensors of the same shape are (fuse-layers). Higher is more alike;
each measure is 1 for identical tensors.

* ``cosine``: cosine of the flattened tensors, in [-1, 1]; the only measure that looks at
  the values position by position, which is what tying the two tensors needs.
* ``cka``: linear centred kernel alignment of the two matrices (output units as samples,
  ``[out, in*k]``), in [0, 1]; invariant to rotations of the input space and to scale, so a
  high CKA says the layers organise their outputs alike, not that their weights are equal.
* ``covariance``: ``1 - |C_a - C_b|_F / (|C_a|_F + |C_b|_F)`` with ``C`` the covariance of the
  input features over the output units, in [0, 1].
* ``wasserstein``: ``1 - W1(a, b) / (std a + std b)`` with ``W1`` the 1-D Wasserstein distance
  between the two value distributions (sorted values); compares distributions only.
"""

from __future__ import annotations

import torch

MEASURES = ("cosine", "cka", "covariance", "wasserstein")


def _matrix(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().double()
    return t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = a.detach().double().flatten(), b.detach().double().flatten()
    return float(x @ y / (x.norm() * y.norm()).clamp_min(1e-300))


def cka(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = _matrix(a), _matrix(b)
    x, y = x - x.mean(0), y - y.mean(0)
    # ||y^T x||^2 / (||x^T x|| ||y^T y||), in its Gram form (cheaper when rows < columns).
    kx, ky = x @ x.T, y @ y.T
    return float((kx * ky).sum() / (kx.norm() * ky.norm()).clamp_min(1e-300))


def covariance(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = _matrix(a), _matrix(b)
    cx = torch.cov(x.T) if x.shape[0] > 1 else x.T @ x
    cy = torch.cov(y.T) if y.shape[0] > 1 else y.T @ y
    cx, cy = cx.reshape(x.shape[1], -1), cy.reshape(y.shape[1], -1)
    return float(1 - (cx - cy).norm() / (cx.norm() + cy.norm()).clamp_min(1e-300))


def wasserstein(a: torch.Tensor, b: torch.Tensor) -> float:
    x = a.detach().double().flatten().sort().values
    y = b.detach().double().flatten().sort().values
    distance = (x - y).abs().mean()
    return float(1 - distance / (x.std() + y.std()).clamp_min(1e-300))


def similarity(measure: str, a: torch.Tensor, b: torch.Tensor) -> float:
    """``measure`` (one of :data:`MEASURES`) of two tensors of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"cannot compare tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    functions = {
        "cosine": cosine,
        "cka": cka,
        "covariance": covariance,
        "wasserstein": wasserstein,
    }
    if measure not in functions:
        raise ValueError(f"unknown similarity {measure!r}; expected one of {MEASURES}")
    return functions[measure](a, b)
