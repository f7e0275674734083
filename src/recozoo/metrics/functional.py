"""Per-user ranking metrics over top-K lists: plain tensor maths, no state.

Every function takes ``hits`` (B, K) with 1.0 where the ranked item is a held-out target, and
``n_targets`` (B,) the number of targets per user, and returns one value per user (B,).
Lists are full-catalogue rankings with the user's seen items removed. The group measures at
the end (`relative_std`, `group_disparity`) take per-group sums instead.
"""

from __future__ import annotations

import functools
import math

import torch


def _check_k(hits: torch.Tensor, k: int) -> None:
    if k < 1 or k > hits.shape[1]:
        raise ValueError(f"k must be within 1..{hits.shape[1]} (the ranked list length), got {k}")


def recall(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """Share of the user's targets found in the top k."""
    _check_k(hits, k)
    return hits[:, :k].sum(1) / n_targets.clamp(min=1)


def precision(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """Share of the top k that are targets."""
    _check_k(hits, k)
    return hits[:, :k].sum(1) / k


def hit_rate(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """1 when at least one target is in the top k."""
    _check_k(hits, k)
    return (hits[:, :k].sum(1) > 0).float()


def mrr(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """Reciprocal rank of the first target in the top k (0 when none)."""
    _check_k(hits, k)
    # hits are 0/1, so the largest hit / rank is 1 / the first hit's rank
    reciprocal = 1.0 / torch.arange(1, k + 1, device=hits.device, dtype=hits.dtype)
    return (hits[:, :k] * reciprocal).amax(1)


def ndcg(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """Binary-relevance NDCG@k: DCG of the list over the DCG of an ideal list of
    ``min(n_targets, k)`` targets."""
    _check_k(hits, k)
    discount, ideal_cum = _discounts(k, hits.device)
    dcg = (hits[:, :k].double() * discount).sum(1)
    n_ideal = n_targets.clamp(min=1, max=k).long()
    return (dcg / ideal_cum.index_select(0, n_ideal - 1)).to(hits.dtype)


@functools.lru_cache(maxsize=32)
def _discounts(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(k,) float64 rank discounts 1 / log2(rank + 1) and their cumulative sums (the ideal
    DCG of 1..k targets): the same for every batch (a suite computes NDCG ~10 times a batch)."""
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))
    return discount, torch.cumsum(discount, 0)


def average_precision(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """AP@k: mean of precision@i at the ranks i of hits, over ``min(n_targets, k)``."""
    _check_k(hits, k)
    top = hits[:, :k]
    ranks = torch.arange(1, k + 1, device=hits.device, dtype=hits.dtype)
    precision_at = torch.cumsum(top, 1) / ranks
    return (precision_at * top).sum(1) / n_targets.clamp(min=1, max=k)


def f1(hits: torch.Tensor, n_targets: torch.Tensor, k: int) -> torch.Tensor:
    """Harmonic mean of precision@k and recall@k (0 when both are 0)."""
    p, r = precision(hits, n_targets, k), recall(hits, n_targets, k)
    return torch.where(p + r > 0, 2 * p * r / (p + r).clamp(min=1e-12), torch.zeros_like(p))


def coverage(exposure: torch.Tensor) -> torch.Tensor:
    """Share of items with a non-zero exposure count."""
    return (exposure > 0).double().mean()


def gini(exposure: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of item exposure counts (0 = equal exposure, 1 = one item gets all)."""
    x = torch.sort(exposure.double()).values
    n = x.numel()
    if n == 0 or x.sum() == 0:
        return torch.zeros((), dtype=torch.float64)
    index = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    return ((2 * index - n - 1) * x).sum() / (n * x.sum())


def self_information(popularity: torch.Tensor, n_users: int) -> torch.Tensor:
    """-log2 of the share of training users who interacted with each item, add-one smoothed
    so that items never seen in training have finite (maximal) novelty."""
    return -torch.log2((popularity + 1.0) / (n_users + 1.0))


def relative_std(values: torch.Tensor) -> torch.Tensor:
    """Population standard deviation over mean of ``values`` (n_groups,): 0 when the groups
    are equal; NaN when the mean is 0 or a value is NaN (no value)."""
    values = values.double()
    mean = values.mean()
    std = values.std(unbiased=False)
    if torch.isnan(mean) or mean == 0:
        return torch.tensor(math.nan, dtype=torch.float64)
    return std / mean


def group_disparity(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """`relative_std` of the groups' probabilities ``numerator / denominator`` (n_groups,), as
    in PopRSP and PopREO (Zhu, Wang and Caverlee, WSDM 2021); NaN when a group's denominator is 0
    (the probability of that group is undefined). With two groups it is |p1 - p2| / (p1 + p2)."""
    if numerator.shape != denominator.shape:
        raise ValueError(f"numerator {tuple(numerator.shape)} and denominator "
                         f"{tuple(denominator.shape)} must have one value per group")
    if bool((denominator <= 0).any()):
        return torch.tensor(math.nan, dtype=torch.float64)
    return relative_std(numerator.double() / denominator.double())
