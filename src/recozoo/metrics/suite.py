"""The shared metric suite: every ranking metric at every K, named as in metrics.json.

The tables below map each metrics.json name to the class that computes it. The suites are built
from them, and `higher_is_better` answers a key's direction by asking that class, so a metric's
direction is stated once: on its class.

A user group is part of a metric's name (``ndcg_heavy_users@10``, ``ndcg_light_users@10``), not
a ``/<bucket>`` suffix: that slot names item-popularity buckets (head, mid, distant) only.

`ranking_suite` gives one `RankingSuite`: the whole suite as one ``torchmetrics.Metric`` whose
states are the members' sums stacked, so a batch costs one update and a stage one compute, one
reset and (under DDP) one reduction per state, however many metrics and cut-offs there are.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator

import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection

from recozoo.data.popularity import BUCKETS
from recozoo.metrics.buckets import BUCKET_METRICS, bucket_metrics
from recozoo.metrics.fairness import (
    ACLT,
    HeavyUserNDCG,
    LightUserNDCG,
    PopREO,
    PopRSP,
    PopularityParity,
)
from recozoo.metrics.ranking import (
    ACCURACY_METRICS,
    APLT,
    ARP,
    ExposureStatistic,
    Gini,
    ItemCoverage,
    Novelty,
    RankedBatch,
    TailRecall,
    UserAveraged,
    weighted_mean,
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


class RankingSuite(Metric):
    """Every metric of a suite in one ``torchmetrics.Metric``, with the values of its members.

    The members are the metric classes of `RANKING_METRICS` and `BUCKET_METRICS`; each states
    its per-batch contribution (`UserAveraged.values`, `PopularityParity.counts`, the exposure
    counts of `ExposureStatistic`) and the value of its sums, and stays usable alone. The suite
    keeps their sums in a few stacked states instead of two per member: on ml-100k's test batch
    (54 metrics) a stage's compute and reset took 2.45 ms as a ``MetricCollection`` of them
    (torchmetrics' per-metric wrappers and state walks) and take 0.76 ms so; the update,
    3.3-3.4 ms either way, is the members' own small tensor operations.

    It reads like the collection it replaced: ``suite[key]`` is the member behind a key
    (``suite["ndcg@10"].values(ranked)`` gives per-user values), `keys`, `items` and iteration
    list them in table order, and `compute` returns ``{prefix + key: value}``.

    Args:
        members: ``{"<name>@<k>[/<bucket>]": metric}``; each a `UserAveraged`,
            `ExposureStatistic` or `PopularityParity`.
        prefix: put before every key `compute` returns (e.g. ``"val/"``).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, members: dict[str, Metric], prefix: str = "", **kwargs):
        super().__init__(**kwargs)
        self.prefix = prefix
        self.members = torch.nn.ModuleDict()
        self._averaged: list[str] = []  # the UserAveraged members, in state order
        self._parity: list[str] = []  # the PopularityParity members, in state order
        self._exposure_ks: list[int] = []  # cut-offs with exposure counts, in state order
        for key, metric in members.items():
            if isinstance(metric, UserAveraged):
                self._averaged.append(key)
            elif isinstance(metric, PopularityParity):
                self._parity.append(key)
            elif isinstance(metric, ExposureStatistic):
                if metric.k not in self._exposure_ks:
                    self._exposure_ks.append(metric.k)
            else:
                raise TypeError(f"metric {key!r} ({type(metric).__name__}) is not a UserAveraged, "
                                "ExposureStatistic or PopularityParity metric")
            self.members[key.replace(".", "_")] = metric  # a ModuleDict key holds no "."
        self._keys = list(members)
        n_items = next((m.exposure.numel() for m in members.values()
                        if isinstance(m, ExposureStatistic)), 0)
        f64 = torch.float64
        self.add_state("totals", torch.zeros(len(self._averaged), dtype=f64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(len(self._averaged), dtype=f64), dist_reduce_fx="sum")
        self.add_state("exposure", torch.zeros(len(self._exposure_ks), n_items, dtype=f64),
                       dist_reduce_fx="sum")
        self.add_state("n_lists", torch.tensor(0.0, dtype=f64), dist_reduce_fx="sum")
        self.add_state("numerators", torch.zeros(len(self._parity), 2, dtype=f64),
                       dist_reduce_fx="sum")
        self.add_state("denominators", torch.zeros(len(self._parity), 2, dtype=f64),
                       dist_reduce_fx="sum")
        self.add_state("unknown", torch.zeros(len(self._parity), dtype=f64), dist_reduce_fx="sum")

    # ------------------------------------------------------------------ the members
    def __getitem__(self, key: str) -> Metric:
        if key not in self._keys:
            raise KeyError(f"{key!r} is not a metric of this suite; it has {self._keys}")
        return self.members[key.replace(".", "_")]

    def keys(self) -> list[str]:
        return list(self._keys)

    def items(self) -> Iterator[tuple[str, Metric]]:
        return ((key, self[key]) for key in self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def clone(self, prefix: str | None = None) -> RankingSuite:
        """A copy (fresh or not, as this one is), with ``prefix`` if given."""
        twin = copy.deepcopy(self)
        if prefix is not None:
            twin.prefix = prefix
        return twin

    # ------------------------------------------------------------------ Metric
    def update(self, ranked: RankedBatch) -> None:
        if self._averaged:
            values, weights = zip(*(self[key].values(ranked) for key in self._averaged))
            weights = torch.stack(weights).double()  # (n_averaged, B)
            self.totals.add_((torch.stack(values).double() * weights).sum(1))
            self.counts.add_(weights.sum(1))
        for row, k in enumerate(self._exposure_ks):
            self.exposure[row].add_(ExposureStatistic.list_counts(ranked, k, self.exposure.shape[1]))
        self.n_lists.add_(ranked.items.shape[0])
        for row, key in enumerate(self._parity):
            counts = self[key].counts(ranked)
            if counts is None:
                self.unknown[row].add_(1)
            else:
                self.numerators[row].add_(counts[0].double())
                self.denominators[row].add_(counts[1].double())

    def compute(self) -> dict[str, torch.Tensor]:
        averaged = dict(zip(self._averaged, weighted_mean(self.totals, self.counts)))
        parity = {key: PopularityParity.of_sums(self.numerators[row], self.denominators[row],
                                                self.unknown[row])
                  for row, key in enumerate(self._parity)}
        values = {}
        for key in self._keys:
            metric = self[key]
            if key in averaged:
                values[key] = averaged[key]
            elif key in parity:
                values[key] = parity[key]
            else:
                exposure = self.exposure[self._exposure_ks.index(metric.k)]
                values[key] = type(metric).of_counts(exposure, self.n_lists)
        return {self.prefix + key: value for key, value in values.items()}


def ranking_suite(ks: list[int], n_items: int, n_users: int, item_popularity: torch.Tensor,
                  tail_mask: torch.Tensor, item_bucket: torch.Tensor | None = None,
                  heavy_users: torch.Tensor | None = None) -> RankingSuite:
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
    return RankingSuite(metrics)


def rating_suite() -> MetricCollection:
    """RMSE and MAE for models that predict ratings."""
    arguments = {"rmse": {"squared": False}}
    return MetricCollection({name: cls(**arguments.get(name, {}))
                             for name, cls in RATING_METRICS.items()}, compute_groups=False)


__all__ = [
    "RANKING_METRICS",
    "RATING_METRICS",
    "RankedBatch",
    "RankingSuite",
    "higher_is_better",
    "metric_class",
    "parse_key",
    "ranking_suite",
    "rating_suite",
]
