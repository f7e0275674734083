"""Metrics per popularity bucket (head, mid, distant; see `recozoo.data.popularity`).

For a bucket b: ``recall@k/b`` and ``ndcg@k/b`` score the list against the user's test targets
in b only (averaged over users with at least one such target, as ``tail_recall`` is; NaN when no
user has one), and ``exposure@k/b`` is the share of list slots that hold items of b (averaged
over users). The three exposures sum to 1; comparing them with the buckets' shares of the
catalogue (20/30/50 by default) shows how a model spreads its attention. An exposure share has
no better direction (``higher_is_better = None``): more of one bucket is less of another.

The tail (``tail_recall``, ``aplt``) is mid and distant together: every item outside the head.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from recozoo.data.popularity import BUCKETS
from recozoo.metrics import functional as F
from recozoo.metrics.ranking import RankedBatch, UserAveraged


def _bucket_index(bucket: str) -> int:
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}, got {bucket!r}")
    return BUCKETS.index(bucket)


def _in_bucket(metric: UserAveraged, index: int, ranked: RankedBatch) -> torch.Tensor:
    """(B, k) True where the ranked item is in bucket ``index``, for the top k (shared by the
    bucket's recall, NDCG and exposure)."""
    if ranked.list_bucket is None or ranked.n_bucket_targets is None:
        raise ValueError(f"{type(metric).__name__} needs a RankedBatch built with item_bucket")
    k = metric.k
    return ranked.shared(("in_bucket", index, k), lambda: ranked.list_bucket[:, :k] == index)


class _BucketAccuracy(UserAveraged):
    """An accuracy metric over the targets of one popularity bucket."""

    higher_is_better = True
    per_bucket: ClassVar = None

    def __init__(self, k: int, bucket: str, **kwargs):
        super().__init__(k, **kwargs)
        self.bucket = bucket
        self.index = _bucket_index(bucket)

    def values(self, ranked: RankedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        in_bucket = _in_bucket(self, self.index, ranked)  # (B, k)
        hits = ranked.shared(("bucket_hits", self.index, self.k),
                             lambda: ranked.hits[:, :self.k] * in_bucket.to(ranked.hits.dtype))
        n_targets = ranked.n_bucket_targets[:, self.index]  # (B,)
        value = type(self).per_bucket(hits, n_targets, self.k)
        return value, (n_targets > 0).to(value.dtype)


class BucketRecall(_BucketAccuracy):
    """Recall@k over the user's targets in one popularity bucket."""

    per_bucket = staticmethod(F.recall)


class BucketNDCG(_BucketAccuracy):
    """NDCG@k over the user's targets in one popularity bucket (ideal list: those targets)."""

    per_bucket = staticmethod(F.ndcg)


class BucketExposure(UserAveraged):
    """Share of the top-k slots given to items of one popularity bucket (no better direction)."""

    higher_is_better = None

    def __init__(self, k: int, bucket: str, **kwargs):
        super().__init__(k, **kwargs)
        self.bucket = bucket
        self.index = _bucket_index(bucket)

    def values(self, ranked: RankedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        value = _in_bucket(self, self.index, ranked).float().mean(1)
        return value, torch.ones_like(value)


#: metric name in metrics.json -> class of the per-bucket metrics.
BUCKET_METRICS: dict[str, type[UserAveraged]] = {
    "recall": BucketRecall, "ndcg": BucketNDCG, "exposure": BucketExposure,
}


def bucket_key(name: str, k: int | str, bucket: str) -> str:
    """The metrics.json name (without stage) of a per-bucket metric: ``recall@10/distant``.

    Raises:
        ValueError: ``name`` is not a per-bucket metric or ``bucket`` not a bucket name.
    """
    if name not in BUCKET_METRICS:
        raise ValueError(f"per-bucket metric must be one of {tuple(BUCKET_METRICS)}, got {name!r}")
    _bucket_index(bucket)
    return f"{name}@{k}/{bucket}"


def bucket_metrics(k: int) -> dict[str, UserAveraged]:
    """``recall@k/<bucket>``, ``ndcg@k/<bucket>``, ``exposure@k/<bucket>`` for every bucket."""
    return {bucket_key(name, k, bucket): cls(k, bucket)
            for bucket in BUCKETS for name, cls in BUCKET_METRICS.items()}
