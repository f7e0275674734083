"""The shared metric suite: every ranking metric at every K, named as in metrics.json.

The tables below map each metrics.json name to the class that computes it. The suites are built
from them, and `higher_is_better` answers a key's direction by asking that class, so a metric's
direction is stated once: on its class.

A user group is part of a metric's name (``ndcg_heavy_users@10``, ``ndcg_light_users@10``), not
a ``/<bucket>`` suffix: that slot names item-popularity buckets (head, mid, distant) only.
"""

from __future__ import annotations

import re

import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection

from recozoo.data.popularity import BUCKETS
from recozoo.metrics.buckets import BUCKET_METRICS, bucket_metrics
from recozoo.metrics.fairness import ACLT, HeavyUserNDCG, LightUserNDCG, PopREO, PopRSP
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

#: metrics.json name -> class of every ranking metric at K; the order is the order of tables.
RANKING_METRICS: dict[str, type[Metric]] = {
    **ACCURACY_METRICS, "tail_recall": TailRecall, "aplt": APLT, "aclt": ACLT,
    "coverage": ItemCoverage, "gini": Gini, "novelty": Novelty, "arp": ARP, "popreo": PopREO,
    "poprsp": PopRSP, "ndcg_light_users": LightUserNDCG, "ndcg_heavy_users": HeavyUserNDCG,
}
#: metrics.json name -> class of the rating errors (torchmetrics' own classes and directions).
RATING_METRICS: dict[str, type[Metric]] = {"rmse": MeanSquaredError, "mae": MeanAbsoluteError}

_KEY = re.compile(r"^(?:(?P<stage>[a-z_]+)/)?(?P<name>[a-z_][a-z0-9_]*)(?:@(?P<k>\d+))?"
                  r"(?:/(?P<bucket>[a-z_]+))?$")


def parse_key(key: str) -> re.Match[str] | None:
    """The parts of a metrics.json key ``[<stage>/]<name>[@<k>][/<bucket>]`` (match groups
    ``stage``, ``name``, ``k`` and ``bucket``, None where absent), or None for another form."""
    return _KEY.match(key)


def whole_test_metric(key: str) -> tuple[str, int | None] | None:
    """(name, K or None) of a whole-population test metric key (``test/<name>[@<k>]``); None
    for anything else (another stage, a per-bucket value, a fact)."""
    match = parse_key(key)
    if match is None or match["stage"] != "test" or match["bucket"] is not None:
        return None
    return match["name"], None if match["k"] is None else int(match["k"])


def metric_class(key: str) -> type[Metric]:
    """The class that computes a metrics.json key.

    Args:
        key: ``[<stage>/]<name>[@<k>][/<bucket>]``, e.g. ``test/gini@10``,
            ``val/recall@20/distant``, ``test/rmse`` or ``ndcg@10``.

    Raises:
        ValueError: the key names no metric of the suites (the message lists the known names).
    """
    match = parse_key(key)
    if match is None:
        raise ValueError(f"metric key {key!r} is not of the form [<stage>/]<name>[@<k>][/<bucket>]")
    name, bucket = match["name"], match["bucket"]
    if bucket is not None:
        if bucket not in BUCKETS or name not in BUCKET_METRICS:
            raise ValueError(f"metric key {key!r}: per-bucket metrics are "
                             f"{tuple(BUCKET_METRICS)} over buckets {BUCKETS}")
        return BUCKET_METRICS[name]
    table = RANKING_METRICS if match["k"] is not None else RATING_METRICS
    if name not in table:
        raise ValueError(f"metric key {key!r}: no such metric; known are "
                         f"{tuple(RANKING_METRICS)} at @<k> and {tuple(RATING_METRICS)}")
    return table[name]


def higher_is_better(key: str) -> bool | None:
    """Direction of a metrics.json key, as its metric class states it: True, False, or None for
    a metric with no better direction (e.g. ``test/exposure@10/head``)."""
    return metric_class(key).higher_is_better


def ranking_suite(ks: list[int], n_items: int, n_users: int, item_popularity: torch.Tensor,
                  tail_mask: torch.Tensor, item_bucket: torch.Tensor | None = None,
                  heavy_users: torch.Tensor | None = None) -> MetricCollection:
    """All ranking metrics at each K, keyed ``<name>@<k>``.

    Args:
        ks: cut-offs, e.g. [10, 20]; each must be at most ``n_items``.
        item_popularity: (n_items,) training counts (for novelty and ARP).
        tail_mask: (n_items,) True for tail items (every item outside the head).
        item_bucket: (n_items,) popularity bucket per item; adds ``recall@<k>/<bucket>``,
            ``ndcg@<k>/<bucket>`` and ``exposure@<k>/<bucket>`` (`recozoo.metrics.buckets`);
            the `RankedBatch` must then be built with the same ``item_bucket``.
        heavy_users: (n_users,) True for heavy users (`recozoo.data.contracts.heavy_user_mask`),
            for ``ndcg_light_users@<k>`` and ``ndcg_heavy_users@<k>`` (NaN without it, or when
            the `RankedBatch` has no ``users``). PopRSP needs the batch's ``n_inputs``.
    """
    if not ks:
        raise ValueError("metric cut-offs ks must not be empty")
    for k in ks:
        if k > n_items:
            raise ValueError(f"metric cut-off K={k} is larger than the catalogue ({n_items} items);"
                             " lower eval.ks")
    # what each metric needs besides K (the accuracy metrics need nothing)
    facts = {"aplt": (tail_mask,), "aclt": (tail_mask,), "coverage": (n_items,),
             "gini": (n_items,), "novelty": (item_popularity, n_users), "arp": (item_popularity,),
             "popreo": (tail_mask,), "poprsp": (tail_mask,),
             "ndcg_light_users": (heavy_users,), "ndcg_heavy_users": (heavy_users,)}
    metrics = {}
    for k in ks:
        for name, cls in RANKING_METRICS.items():
            metrics[f"{name}@{k}"] = cls(k, *facts.get(name, ()))
        if item_bucket is not None:
            metrics.update(bucket_metrics(k))
    return MetricCollection(metrics, compute_groups=False)


def rating_suite() -> MetricCollection:
    """RMSE and MAE for models that predict ratings."""
    arguments = {"rmse": {"squared": False}}
    return MetricCollection({name: cls(**arguments.get(name, {}))
                             for name, cls in RATING_METRICS.items()}, compute_groups=False)


__all__ = [
    "RANKING_METRICS",
    "RATING_METRICS",
    "RankedBatch",
    "higher_is_better",
    "metric_class",
    "parse_key",
    "ranking_suite",
    "rating_suite",
]
