"""The metric suite as ``torchmetrics.Metric`` classes over top-K lists.

The evaluation path ranks the full catalogue once per batch, keeps the top K, and hands every
metric the same `RankedBatch`. States are per-batch sums, so they reduce with ``sum`` across
processes (DDP-safe) and nothing grows with the number of users.

The popularity-fairness metrics (ACLT, PopREO, PopRSP, NDCG of light and heavy users) are in
`recozoo.metrics.fairness`, on the same `RankedBatch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torchmetrics import Metric

from recozoo.data.popularity import BUCKETS
from recozoo.metrics import functional as F
from recozoo.top_k import top_k

#: the item index of an empty slot in a ranked list: a list shorter than K (a list made by
#: another tool, `recozoo.report.external`, or a user it has no list for) is padded with it. It
#: is never a target and in no group or bucket; the Evaluator's lists never hold it.
NO_ITEM = -1
#: the two item groups of the popularity-parity metrics (PopREO, PopRSP): column 0 of
#: `RankedBatch.n_inputs` is the head, column 1 the tail (every item outside the head).
POPULARITY_GROUPS: tuple[str, ...] = ("head", "tail")
#: `RankedBatch.from_pairs` finds the listed targets in a dense (B, n_items) table where it has
#: at most this many entries, else by binary search in the sorted target keys. Measured on
#: random lists and targets (2 threads, ms dense / search, K 100 and 20): 943 x 1,682 (ml-100k's
#: test batch shape, 9,430 targets) 0.38 / 1.86 and 0.27 / 0.53; 1,024 x 4,096 (10,240 targets)
#: 0.61 / 1.92 and 0.44 / 0.59; 1,024 x 16,384 1.05 / 1.95 and 0.81 / 0.60; 1,440 x 46,600 (the
#: 10^6 shop's batch shape) 17.0 / 1.7 with 1,440 targets, 17.2 / 3.2 with 30,000.
DENSE_MEMBERSHIP_MAX_ENTRIES = 1 << 22


def per_slot(table: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``table[items]`` for a per-item ``table`` (n_items,) and a (B, K) index: the same
    values through ``index_select`` on the flattened index, which cost a third of 2-D advanced
    indexing on ml-100k's test batch (24 against 68 us; the suite looks up ~10 per batch)."""
    return table.index_select(0, items.reshape(-1)).view(items.shape)


@dataclass
class RankedBatch:
    """Top-K lists of a batch of users, with what the metrics need to score them.

    Args:
        items: (B, K) ranked item indices, best first; `NO_ITEM` pads a shorter list.
        hits: (B, K) 1.0 where the item is a target.
        tail_hits: (B, K) 1.0 where the item is a target and a tail item (outside the head).
        n_targets: (B,) targets per user.
        n_tail_targets: (B,) tail targets per user.
        n_bucket_targets: (B, n_buckets) targets per user in each popularity bucket, or None.
        list_bucket: (B, K) popularity bucket of each ranked item (an index into
            `recozoo.data.popularity.BUCKETS`: 0 head, 1 mid, 2 distant; `NO_ITEM` for an
            empty slot), or None.
        users: (B,) the user index of each row (for user-group metrics), or None.
        n_inputs: (B, 2) distinct input items (the masked, already seen ones) of each user in
            the head and in the tail (`POPULARITY_GROUPS`; for PopRSP), or None when unknown.
        present: (B, K) True where a slot holds an item; derived from ``items`` when not given.

    Pieces that several metrics read (a per-user NDCG@10 is read by ``ndcg@10``, both user
    groups' NDCG and the per-user values) are computed once per batch: `shared`.
    """

    items: torch.Tensor
    hits: torch.Tensor
    tail_hits: torch.Tensor
    n_targets: torch.Tensor
    n_tail_targets: torch.Tensor
    n_bucket_targets: torch.Tensor | None = None
    list_bucket: torch.Tensor | None = None
    users: torch.Tensor | None = None
    n_inputs: torch.Tensor | None = None
    present: torch.Tensor | None = None
    _shared: dict[tuple, object] = field(default_factory=dict, init=False, repr=False,
                                         compare=False)

    def __post_init__(self) -> None:
        if self.present is None:
            self.present = self.items != NO_ITEM

    def shared(self, key: tuple, compute: Callable[[], object]) -> object:
        """``compute()``, once per batch and ``key``: a piece several metrics read. The key
        names everything the piece depends on besides this batch (e.g. ``(F.ndcg, 10)``).

        The suite updates ~50 metrics per batch, most of them from the same few pieces; each
        computing its own made the metric work on ml-100k's test batch about twice its cost."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    def top(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k) the first k items, empty slots replaced by item 0 so they can index per-item
        tables, and (B, k) whether each slot holds an item (weight the looked-up values by it)."""
        return self.shared(("top", k), lambda: (self.items[:, :k].clamp(min=0),
                                                self.present[:, :k]))

    def per_user(self, metric: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
                 k: int) -> torch.Tensor:
        """(B,) ``metric(hits, n_targets, k)`` (a function of `recozoo.metrics.functional`)."""
        return self.shared((metric, k), lambda: metric(self.hits, self.n_targets, k))

    def has_targets(self) -> torch.Tensor:
        """(B,) 1.0 for a user with at least one target (the users accuracy is averaged over)."""
        return self.shared(("has_targets",), lambda: (self.n_targets > 0).to(self.hits.dtype))

    @classmethod
    def from_scores(cls, scores: torch.Tensor, targets: torch.Tensor, tail_mask: torch.Tensor,
                    k: int) -> RankedBatch:
        """Rank ``scores`` (B, n_items; seen items already at -inf) against the 0/1 ``targets``
        matrix (B, n_items)."""
        if k > scores.shape[1]:
            raise ValueError(f"K={k} is larger than the catalogue ({scores.shape[1]} items)")
        items = top_k(scores, k).indices  # (B, K)
        return cls.from_lists(items, targets, tail_mask)

    @classmethod
    def from_lists(cls, items: torch.Tensor, targets: torch.Tensor, tail_mask: torch.Tensor,
                   item_bucket: torch.Tensor | None = None, users: torch.Tensor | None = None,
                   n_inputs: torch.Tensor | None = None) -> RankedBatch:
        """Score given ranked lists (B, K; `NO_ITEM` pads a short list) against the 0/1
        ``targets`` matrix (B, n_items): `from_pairs` on its non-zero entries."""
        rows, cols = targets.nonzero(as_tuple=True)
        return cls.from_pairs(items, rows, cols, tail_mask, item_bucket, users, n_inputs)

    @classmethod
    def from_pairs(cls, items: torch.Tensor, target_rows: torch.Tensor,
                   target_cols: torch.Tensor, tail_mask: torch.Tensor,
                   item_bucket: torch.Tensor | None = None, users: torch.Tensor | None = None,
                   n_inputs: torch.Tensor | None = None) -> RankedBatch:
        """Score ranked lists (B, K; `NO_ITEM` pads a short list) against the targets given as
        (row, item) pairs (a repeated pair counts once); with ``item_bucket`` (n_items,) also
        count each user's targets per popularity bucket. ``users`` (B,) and ``n_inputs``
        (B, 2) are passed on (see the class).

        The cost is O(B x K + targets): nothing of the catalogue's size is built, so scoring a
        batch stays small next to ranking it (a dense (B, n_items) target matrix cost more than
        the top-K at 10^5 items).
        """
        n_rows, n_items = items.shape[0], tail_mask.numel()
        device = items.device
        present = items != NO_ITEM
        safe = items.clamp(min=0)
        keys = torch.unique(target_rows.long().to(device) * n_items
                            + target_cols.long().to(device))  # sorted, one per distinct pair
        rows, cols = keys // n_items, keys % n_items
        list_keys = torch.arange(n_rows, device=device)[:, None] * n_items + safe  # (B, K)
        if not len(keys):
            listed = torch.zeros(items.shape, dtype=torch.bool, device=device)  # (B, K)
        elif n_rows * n_items <= DENSE_MEMBERSHIP_MAX_ENTRIES:
            is_target = torch.zeros(n_rows * n_items, dtype=torch.bool, device=device)
            is_target[keys] = True
            listed = is_target[list_keys]
        else:  # membership by binary search in the sorted keys (faster than isin)
            found = torch.searchsorted(keys, list_keys).clamp(max=len(keys) - 1)  # (B, K)
            listed = keys[found] == list_keys
        hits = (listed & present).float()  # (B, K)
        tail = tail_mask.to(device)
        is_tail = tail[cols].double()  # (T,)
        n_targets = torch.bincount(rows, minlength=n_rows).float()
        n_tail_targets = torch.bincount(rows, weights=is_tail, minlength=n_rows).float()
        n_bucket_targets = list_bucket = None
        if item_bucket is not None:
            bucket = item_bucket.to(device).long()
            list_bucket = torch.where(present, per_slot(bucket, safe), NO_ITEM)  # (B, K)
            slot = rows * len(BUCKETS) + bucket[cols]
            n_bucket_targets = torch.bincount(slot, minlength=n_rows * len(BUCKETS))
            n_bucket_targets = n_bucket_targets.view(n_rows, len(BUCKETS)).float()
        return cls(items=items, hits=hits, tail_hits=hits * per_slot(tail, safe),
                   n_targets=n_targets, n_tail_targets=n_tail_targets, n_bucket_targets=n_bucket_targets,
                   list_bucket=list_bucket, users=users, n_inputs=n_inputs, present=present)


def inputs_per_group(rows: torch.Tensor, cols: torch.Tensor, n_rows: int,
                     tail_mask: torch.Tensor) -> torch.Tensor:
    """(n_rows, 2) distinct input items of each row in the head and in the tail
    (`POPULARITY_GROUPS`), from the (row, item) pairs of the inputs; a repeated pair counts once.

    Example:
        >>> inputs_per_group(batch.seen_rows, batch.seen_cols, len(batch), info.tail_mask)
    """
    n_items = tail_mask.numel()
    keys = torch.unique(rows.long() * n_items + cols.long())  # one key per distinct pair
    slot = (keys // n_items) * 2 + tail_mask[keys % n_items].long()
    counts = torch.zeros(n_rows * 2, dtype=torch.float64, device=tail_mask.device)
    counts.index_add_(0, slot, torch.ones_like(slot, dtype=torch.float64))
    return counts.view(n_rows, 2)


class UserAveraged(Metric):
    """Mean over users of a per-user metric at K, over the users that qualify (weight 1).

    Subclasses set ``per_user`` (or override `values`) and state ``higher_is_better``. With no
    qualifying user, `compute` is NaN: "no value", which no table may rank.
    """

    is_differentiable = False
    higher_is_better: ClassVar[bool | None]
    full_state_update = False
    per_user: ClassVar[Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]]

    def __init__(self, k: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k = k
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def values(self, ranked: RankedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-user values and a 0/1 weight saying which users count."""
        return ranked.per_user(type(self).per_user, self.k), ranked.has_targets()

    def update(self, ranked: RankedBatch) -> None:
        value, weight = self.values(ranked)
        # in place: ``self.total += x`` rebinds the state through Module.__setattr__ (~10 us,
        # twice per metric and batch)
        self.total.add_((value * weight).sum().double())
        self.count.add_(weight.sum().double())

    def compute(self) -> torch.Tensor:
        """The weighted mean, or NaN when no user qualified."""
        return weighted_mean(self.total, self.count)


def weighted_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` (float32), NaN where ``count`` is 0 (no user qualified): the value of
    a `UserAveraged` metric from its sums (elementwise, for a whole suite's sums at once)."""
    mean = total / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, math.nan)).float()


class Recall(UserAveraged):
    higher_is_better = True
    per_user = staticmethod(F.recall)


class NDCG(UserAveraged):
    higher_is_better = True
    per_user = staticmethod(F.ndcg)


class HitRate(UserAveraged):
    higher_is_better = True
    per_user = staticmethod(F.hit_rate)


class MRR(UserAveraged):
    higher_is_better = True
    per_user = staticmethod(F.mrr)


class Precision(UserAveraged):
    higher_is_better = True
    per_user = staticmethod(F.precision)


class MAP(UserAveraged):
    higher_is_better = True
    per_user = staticmethod(F.average_precision)


class F1(UserAveraged):
    higher_is_better = True
    per_user = staticmethod(F.f1)


class TailRecall(UserAveraged):
    """Recall over the tail targets only (items outside the head), averaged over users who have
    a tail target; NaN when no user has one."""

    higher_is_better = True

    def values(self, ranked: RankedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        value = F.recall(ranked.tail_hits, ranked.n_tail_targets, self.k)
        return value, (ranked.n_tail_targets > 0).to(value.dtype)


class _ListAveraged(UserAveraged):
    """Mean over users of a property of the recommended items (needs per-item values)."""

    def __init__(self, k: int, item_values: torch.Tensor, **kwargs):
        super().__init__(k, **kwargs)
        self.register_buffer("item_values", item_values.float(), persistent=False)

    def values(self, ranked: RankedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean over the items in the list; a user with an empty list does not count."""
        top, present = ranked.top(self.k)
        present = present.to(self.item_values.dtype)
        n_listed = present.sum(1)
        value = (per_slot(self.item_values, top) * present).sum(1) / n_listed.clamp(min=1)
        return value, (n_listed > 0).to(value.dtype)


class APLT(_ListAveraged):
    """Average percentage of long-tail items: the share of tail items in each list."""

    higher_is_better = True

    def __init__(self, k: int, tail_mask: torch.Tensor, **kwargs):
        super().__init__(k, tail_mask.float(), **kwargs)


class Novelty(_ListAveraged):
    """Mean self-information (-log2 popularity share) of the recommended items."""

    higher_is_better = True

    def __init__(self, k: int, item_popularity: torch.Tensor, n_users: int, **kwargs):
        super().__init__(k, F.self_information(item_popularity.float(), n_users), **kwargs)


class ARP(_ListAveraged):
    """Average recommendation popularity: mean training count of the recommended items."""

    higher_is_better = False

    def __init__(self, k: int, item_popularity: torch.Tensor, **kwargs):
        super().__init__(k, item_popularity.float(), **kwargs)


class ExposureStatistic(Metric):
    """A statistic of how often each item is recommended in the top K, across all users.

    Subclasses set ``of_exposure`` (a function of the (n_items,) counts); with no list seen,
    `compute` is NaN ("no value").
    """

    is_differentiable = False
    full_state_update = False
    higher_is_better: ClassVar[bool | None]
    of_exposure: ClassVar[Callable[[torch.Tensor], torch.Tensor]]

    def __init__(self, k: int, n_items: int, **kwargs):
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k = k
        self.add_state("exposure", torch.zeros(n_items, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_lists", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ranked: RankedBatch) -> None:
        self.exposure.add_(self.list_counts(ranked, self.k, self.exposure.numel()))
        self.n_lists.add_(ranked.items.shape[0])

    @staticmethod
    def list_counts(ranked: RankedBatch, k: int, n_items: int) -> torch.Tensor:
        """(n_items,) float64: how many of the batch's top-``k`` lists hold each item."""
        top, present = ranked.top(k)
        return torch.bincount(top.reshape(-1), weights=present.reshape(-1).double(),
                              minlength=n_items)

    def compute(self) -> torch.Tensor:
        return self.of_counts(self.exposure, self.n_lists)

    @classmethod
    def of_counts(cls, exposure: torch.Tensor, n_lists: torch.Tensor) -> torch.Tensor:
        """The statistic of the (n_items,) exposure counts of ``n_lists`` lists, or NaN when no
        list was seen."""
        if n_lists == 0:
            return torch.tensor(math.nan)
        return cls.of_exposure(exposure).float()


class ItemCoverage(ExposureStatistic):
    """Share of the catalogue that appears in at least one top-K list."""

    higher_is_better = True
    of_exposure = staticmethod(F.coverage)


class Gini(ExposureStatistic):
    """Gini index of how exposure is spread over items (lower is more even)."""

    higher_is_better = False
    of_exposure = staticmethod(F.gini)


#: metric name in metrics.json -> class; the order is the order of tables.
ACCURACY_METRICS: dict[str, type[UserAveraged]] = {
    "recall": Recall, "ndcg": NDCG, "hit": HitRate, "mrr": MRR,
    "precision": Precision, "map": MAP, "f1": F1,
}
#: metrics kept per user on the test set (for paired significance tests).
PER_USER_METRICS: tuple[str, ...] = ("recall", "ndcg", "hit", "mrr", "tail_recall", "aclt",
                                     "ndcg_light_users", "ndcg_heavy_users")
