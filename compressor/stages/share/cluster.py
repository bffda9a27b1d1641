"""cluster-weights: a k-entry codebook per weight tensor (k-means on its values, k <= 256).

Each chosen tensor keeps its shape and dtype but holds at most ``k`` distinct values, so the
safetensors writer stores it as uint8 indices plus the codebook (``compressor.artifacts``,
lossless, expanded on load). This is a storage reduction only: the model still computes in
its float dtype with the same shapes, so latency does not change. Training the model again
moves the weights off their codebook and the saving is lost.

The 1-D k-means is exact Lloyd iteration on sorted values (each cluster is an interval),
started from the values' quantiles, so it is deterministic: no seed is needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

from compressor.graph import matches

CODEBOOK_MAX = 256
_LAYERS = (nn.Linear, _ConvNd, nn.Embedding)


def kmeans_1d(
    values: torch.Tensor, k: int, iterations: int = 30
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the values of a tensor into at most ``k`` centroids.

    Returns:
        ``(centroids, index)``: sorted centroids (float64) and each value's centroid (long,
        the tensor's shape).
    """
    if not 1 <= k <= CODEBOOK_MAX:
        raise ValueError(f"k must be in [1, {CODEBOOK_MAX}], got {k}")
    flat = values.detach().double().flatten()
    ordered = flat.sort().values
    n = ordered.numel()
    distinct = torch.unique_consecutive(ordered)
    if distinct.numel() <= k:  # already on a codebook: keep it exactly
        return distinct, torch.bucketize(flat, distinct).reshape(values.shape)
    # Clusters of sorted values are intervals, so each Lloyd step needs only k-1 searches
    # and prefix sums, not a pass over every value.
    prefix = torch.cat([flat.new_zeros(1), ordered.cumsum(0)])
    starts = ((torch.arange(k, dtype=torch.float64) + 0.5) / k * n).long().clamp(max=n - 1)
    centroids = torch.unique_consecutive(ordered[starts])
    for _ in range(iterations):
        cuts = torch.searchsorted(ordered, (centroids[1:] + centroids[:-1]) / 2, right=True)
        edges = torch.cat([cuts.new_zeros(1), cuts, cuts.new_full((1,), n)])
        counts = (edges[1:] - edges[:-1]).to(flat.dtype)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        # An empty interval keeps its centroid: a codebook must never hold NaN.
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    index = torch.bucketize(flat, (centroids[1:] + centroids[:-1]) / 2)
    return centroids, index.reshape(values.shape)


@dataclass(frozen=True)
class Clustered:
    """One tensor put on a codebook."""

    name: str
    numel: int
    distinct: int
    relative_error: float  # |w - w_clustered| / |w|


def targets(
    model: nn.Module,
    *,
    tensors: str = "weights",
    modules: Iterable[str] = (),
    ignore: Iterable[str] = (),
    min_numel: int = 1024,
) -> list[tuple[str, nn.Parameter]]:
    """The parameters to cluster: layer weights (``weights``) or every float parameter
    (``all``), with at least ``min_numel`` values; each shared tensor once."""
    modules, ignore = list(modules), list(ignore)
    seen: set[int] = set()
    found = []
    for module_name, module in model.named_modules():
        if tensors == "weights" and not isinstance(module, _LAYERS):
            continue
        for attr, param in module._parameters.items():
            if param is None or not param.is_floating_point() or id(param) in seen:
                continue
            if tensors == "weights" and attr != "weight":
                continue
            if param.numel() < min_numel:
                continue
            if modules and not any(matches(p, module_name) for p in modules):
                continue
            if any(matches(p, module_name) for p in ignore):
                continue
            seen.add(id(param))
            found.append((f"{module_name}.{attr}".lstrip("."), param))
    return found


@torch.no_grad()
def cluster_parameters(
    params: list[tuple[str, nn.Parameter]], k: int, iterations: int = 30
) -> list[Clustered]:
    """Replace each parameter's values by their nearest of ``k`` centroids, in place."""
    done = []
    for name, param in params:
        centroids, index = kmeans_1d(param.data.cpu(), k, iterations)
        clustered = centroids.to(param.dtype)[index].to(param.device)
        norm = float(param.data.double().norm())
        error = float((param.data.double() - clustered.double()).norm()) / max(norm, 1e-300)
        param.data.copy_(clustered)
        distinct = int(torch.unique(param.data).numel())
        done.append(Clustered(name, param.numel(), distinct, round(error, 6)))
    return done
