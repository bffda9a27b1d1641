"""Low-rank factorisation of a token embedding table: ``E ≈ A·B`` learned by reconstruction.

1. Rank: given directly, as the share of the table's parameters to keep, or as the share of
   the (weighted) spectral energy to keep; rounded down to a multiple of ``round_to``.
2. Initialisation: the truncated SVD of the row-weighted table ``D^½ E`` (rows weighted by how
   often the corpus uses each token, plus a floor so unseen tokens still count), which is the
   exact minimiser of the weighted reconstruction error ``||D^½ (E - A B)||²``.
3. Refinement: Adam on the reconstruction of what the model actually sees, the embedding
   block's output ``LayerNorm(E_i + position_j + type_0)`` for tokens drawn by frequency and
   random positions. LayerNorm discards each row's mean and scale, so the SVD spends rank on
   directions that do not matter; refinement moves it to those that do. Models without a
   BERT-style embedding block are refined on the weighted table itself (which the SVD already
   solves exactly, so refinement then stops at once). Off by default in the stage
   (``refine_steps: 0``): on MiniLM, 300 steps lowered held-out sentence fidelity at ranks 64
   and 128 (``benchmarks/minilm_embeddings.py``), since per-token reconstruction is not what
   sentence embeddings depend on.

The result is a :class:`compressor.rebuildable.FactorizedEmbedding`, registered for rebuilding, so
the compacted model saves, reloads and exports like any other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.errors import StageError
from compressor.rebuildable import FactorizedEmbedding

PostFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def row_weights(counts: torch.Tensor | None, size: int, floor: float = 0.1) -> torch.Tensor:
    """Per-row weights: token frequencies (normalised to mean 1) mixed with a uniform ``floor``
    share, so that rows the corpus never used are still reconstructed, only less precisely."""
    uniform = torch.ones(size, dtype=torch.float64)
    if counts is None or float(counts.sum()) == 0:
        return uniform
    freq = counts[:size].double()
    freq = freq / freq.mean()
    return (1 - floor) * freq + floor * uniform


def break_even_rank(rows: int, dim: int) -> int:
    """The largest rank whose factors ``rows*r + r*dim`` are smaller than the table."""
    return max(0, (rows * dim - 1) // (rows + dim))


def choose_rank(
    rows: int,
    dim: int,
    singular_values: torch.Tensor,
    *,
    rank: int | None = None,
    keep: float | None = None,
    energy: float | None = None,
    round_to: int = 8,
) -> int:
    """The rank one target asks for (exactly one of ``rank``, ``keep``, ``energy``).

    Raises:
        StageError: the rank would not make the table smaller.
    """
    if rank is None:
        if keep is not None:
            rank = int(keep * rows * dim / (rows + dim))
        else:
            share = singular_values.double().pow(2).cumsum(0)
            share = share / share[-1]
            rank = int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype))) + 1
        if round_to > 1:
            rank = max(round_to, rank // round_to * round_to)
    rank = min(rank, rows, dim)
    if rank > break_even_rank(rows, dim):
        raise StageError(
            f"rank {rank} does not make the {rows}x{dim} table smaller (the factors would "
            f"hold {rank * (rows + dim):,} numbers, the table {rows * dim:,})",
            hint=f"use a rank of at most {break_even_rank(rows, dim)} (or a smaller keep/energy)",
        )
    return rank


def weighted_svd(table: torch.Tensor, weights: torch.Tensor, rank: int):
    """``(A, B, singular values)`` minimising ``sum_i w_i ||E_i - A_i B||²`` at ``rank``."""
    root = weights.double().sqrt().unsqueeze(1)
    u, s, vh = torch.linalg.svd(root * table.double(), full_matrices=False)
    a = u[:, :rank] * s[:rank] / root
    b = vh[:rank]
    return a.float(), b.float(), s


def bert_post(embeddings: nn.Module | None) -> PostFn | None:
    """``rows -> LayerNorm(rows + position_j + type_0)`` for a BERT-style embedding block
    (random position per row), or None when the block does not look like one."""
    norm = getattr(embeddings, "LayerNorm", None)
    positions = getattr(embeddings, "position_embeddings", None)
    if not isinstance(norm, nn.LayerNorm) or not isinstance(positions, nn.Embedding):
        return None
    types = getattr(embeddings, "token_type_embeddings", None)
    pos = positions.weight.detach().float()
    type0 = types.weight.detach()[0].float() if isinstance(types, nn.Embedding) else 0.0
    weight = norm.weight.detach().float() if norm.weight is not None else None
    bias = norm.bias.detach().float() if norm.bias is not None else None

    def post(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        j = torch.randint(0, len(pos), (len(rows),), generator=generator)
        return F.layer_norm(rows + pos[j] + type0, norm.normalized_shape, weight, bias, norm.eps)

    return post


@dataclass
class Factorization:
    module: FactorizedEmbedding
    rank: int
    energy: float  # share of the weighted spectral energy the rank keeps
    error_svd: float  # weighted relative reconstruction error of the table after SVD
    error: float  # ... after refinement
    post_error_svd: float | None  # relative error of what the model sees, after SVD
    post_error: float | None  # ... after refinement

    def report(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 5)

        return {
            "rank": self.rank,
            "energy_kept": r(self.energy),
            "table_error": {"svd": r(self.error_svd), "refined": r(self.error)},
            "output_error": {"svd": r(self.post_error_svd), "refined": r(self.post_error)},
        }


def _table_error(a, b, table, weights) -> float:
    diff = (a @ b - table).pow(2).sum(1)
    return math.sqrt(float((weights * diff).sum() / (weights * table.pow(2).sum(1)).sum()))


def _post_error(a, b, table, weights, post, seed: int, samples: int = 8192) -> float:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.multinomial(weights.float(), samples, replacement=True, generator=generator)
    g1, g2 = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    want = post(table[rows], g1)
    got = post(a[rows] @ b, g2)
    return math.sqrt(float((got - want).pow(2).sum() / want.pow(2).sum()))


def factorize_embedding(
    embedding: nn.Embedding,
    rank: int,
    *,
    weights: torch.Tensor | None = None,
    post: PostFn | None = None,
    refine_steps: int = 300,
    lr: float = 3e-3,
    batch_rows: int = 4096,
    seed: int = 0,
) -> Factorization:
    """Factorise ``embedding``'s table at ``rank``: weighted SVD, then refinement (see the
    module docstring). The original module is left untouched."""
    table = embedding.weight.detach().float().cpu()
    rows, dim = table.shape
    weights = (weights if weights is not None else torch.ones(rows)).double()[:rows]
    a, b, s = weighted_svd(table, weights, rank)
    energy = float(s[:rank].double().pow(2).sum() / s.double().pow(2).sum())
    error_svd = _table_error(a, b, table, weights.float())
    post_svd = _post_error(a, b, table, weights, post, seed) if post is not None else None
    if post is not None and refine_steps > 0:
        a, b = _refine(a, b, table, weights, post, refine_steps, lr, batch_rows, seed)
    module = FactorizedEmbedding(rows, dim, rank, padding_idx=embedding.padding_idx)
    with torch.no_grad():
        module.codes.copy_(a)
        module.basis.copy_(b)
    module.to(embedding.weight.device, embedding.weight.dtype)
    return Factorization(
        module,
        rank,
        energy,
        error_svd,
        _table_error(a, b, table, weights.float()),
        post_svd,
        _post_error(a, b, table, weights, post, seed) if post is not None else None,
    )


def _refine(a, b, table, weights, post, steps, lr, batch_rows, seed):
    a, b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([a, b], lr=lr)
    generator = torch.Generator().manual_seed(seed + 7)
    probs = weights.float()
    for step in range(steps):
        rows = torch.multinomial(probs, batch_rows, replacement=True, generator=generator)
        state = generator.get_state()
        want = post(table[rows], generator)
        generator.set_state(state)  # the same positions for the reconstruction
        got = post(a[rows] @ b, generator)
        loss = (got - want).pow(2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        # Cosine decay: large early moves, then settle (a few hundred steps in all).
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.step()
    return a.detach(), b.detach()
