"""The shared metric suite: every ranking metric at every K, named as in metrics.json."""

from __future__ import annotations

import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from recozoo.metrics.buckets import bucket_metrics
from recozoo.metrics.ranking import (
    ACCURACY_METRICS,
    APLT,
    ARP,
    Gini,
    ItemCoverage,
    Novelty,
    RankedBatch,
    TailRecall,
)

#: names of metrics whose lower values are better (all others: higher is better).
LOWER_IS_BETTER: frozenset[str] = frozenset({"gini", "arp", "rmse", "mae"})


#: names that describe a list without a better direction (a bucket's share of exposure).
UNDIRECTED: frozenset[str] = frozenset({"exposure"})


def metric_name(key: str) -> str:
    """``test/recall@10/tail`` -> ``recall``."""
    name = key.split("/")[1] if "/" in key else key
    return name.split("@")[0]


def has_direction(key: str) -> bool:
    """False for keys such as ``test/exposure@10/head`` that no table should mark as best."""
    return metric_name(key) not in UNDIRECTED


def higher_is_better(key: str) -> bool:
    """Direction of a metrics.json key such as ``test/gini@10`` or ``val/ndcg@20``."""
    return metric_name(key) not in LOWER_IS_BETTER


def ranking_suite(ks: list[int], n_items: int, n_users: int, item_popularity: torch.Tensor,
                  tail_mask: torch.Tensor,
                  item_bucket: torch.Tensor | None = None) -> MetricCollection:
    """All ranking metrics at each K, keyed ``<name>@<k>``.

    Args:
        ks: cut-offs, e.g. [10, 20]; each must be at most ``n_items``.
        item_popularity: (n_items,) training counts (for novelty and ARP).
        tail_mask: (n_items,) True for tail items.
        item_bucket: (n_items,) popularity bucket per item; adds ``recall@<k>/<bucket>``,
            ``ndcg@<k>/<bucket>`` and ``exposure@<k>/<bucket>`` (`recozoo.metrics.buckets`);
            the `RankedBatch` must then be built with the same ``item_bucket``.
    """
    if not ks:
        raise ValueError("metric cut-offs ks must not be empty")
    for k in ks:
        if k > n_items:
            raise ValueError(f"metric cut-off K={k} is larger than the catalogue ({n_items} items);"
                             " lower eval.ks")
    metrics = {}
    for k in ks:
        for name, cls in ACCURACY_METRICS.items():
            metrics[f"{name}@{k}"] = cls(k)
        metrics[f"tail_recall@{k}"] = TailRecall(k)
        metrics[f"aplt@{k}"] = APLT(k, tail_mask)
        metrics[f"coverage@{k}"] = ItemCoverage(k, n_items)
        metrics[f"gini@{k}"] = Gini(k, n_items)
        metrics[f"novelty@{k}"] = Novelty(k, item_popularity, n_users)
        metrics[f"arp@{k}"] = ARP(k, item_popularity)
        if item_bucket is not None:
            metrics.update(bucket_metrics(k))
    return MetricCollection(metrics, compute_groups=False)


def rating_suite() -> MetricCollection:
    """RMSE and MAE for models that predict ratings."""
    return MetricCollection({"rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError()},
                            compute_groups=False)


__all__ = ["RankedBatch", "ranking_suite", "rating_suite", "higher_is_better", "LOWER_IS_BETTER"]
