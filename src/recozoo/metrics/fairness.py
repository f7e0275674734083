"""Popularity fairness over top-K lists, on the same `RankedBatch` as every metric: ACLT (tail
items per list), PopREO and PopRSP (how unequally head and tail items are recommended) and NDCG of
light and heavy users (by training activity). States are per-batch sums (DDP-safe)."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar

import torch
from torchmetrics import Metric

from recozoo.metrics import functional as F
from recozoo.metrics.ranking import RankedBatch, UserAveraged, per_slot


class ACLT(UserAveraged):
    """Average coverage of long-tail items (Abdollahpouri, Burke and Mobasher, "Managing
    Popularity Bias in Recommendation with Personalized Re-ranking", FLAIRS 2019): the number of
    tail items in each top-K list, averaged over users (a user with an empty list counts 0), as
    Elliot's and WarpRec's ``ACLT``. Higher is better for the long tail; at most K."""

    higher_is_better = True

    def __init__(self, k: int, tail_mask: torch.Tensor, **kwargs):
        super().__init__(k, **kwargs)
        self.register_buffer("tail", tail_mask.float(), persistent=False)

    def values(self, ranked: RankedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        top, present = ranked.top(self.k)
        value = (per_slot(self.tail, top) * present).sum(1)
        return value, torch.ones_like(value)


class PopularityParity(Metric):
    """How unequally the head and the tail (`POPULARITY_GROUPS`) are treated: the relative
    standard deviation (population std / mean) of a per-group probability P(g) = sum over users
    of a count / sum over users of an opportunity (`F.group_disparity`). 0 = both groups equal;
    NaN where a group's probability is undefined (no opportunity) or both are 0.

    Subclasses set ``counts``: the batch's (2,) numerator and denominator. States are per-group
    sums, so they reduce with ``sum`` across processes.
    """

    is_differentiable = False
    full_state_update = False
    higher_is_better = False

    def __init__(self, k: int, tail_mask: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k = k
        self.register_buffer("tail", tail_mask.float(), persistent=False)
        self.add_state("numerator", torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("denominator", torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")
        # batches whose denominator was unknown (PopRSP without the users' inputs)
        self.add_state("unknown", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @abstractmethod
    def counts(self, ranked: RankedBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(2,) numerator and (2,) denominator of the batch (head, tail); None: unknown."""

    def update(self, ranked: RankedBatch) -> None:
        counts = self.counts(ranked)
        if counts is None:
            self.unknown.add_(1)
            return
        self.numerator.add_(counts[0].double())
        self.denominator.add_(counts[1].double())

    def compute(self) -> torch.Tensor:
        return self.of_sums(self.numerator, self.denominator, self.unknown)

    @staticmethod
    def of_sums(numerator: torch.Tensor, denominator: torch.Tensor,
                unknown: torch.Tensor) -> torch.Tensor:
        """The relative std of the groups' probabilities from the (2,) summed ``numerator`` and
        ``denominator``, or NaN (see the class; ``unknown``: batches without a denominator)."""
        if unknown > 0:
            return torch.tensor(math.nan)
        return F.group_disparity(numerator, denominator).float()


class PopREO(PopularityParity):
    """Popularity-based ranking-based equal opportunity (Zhu, Wang and Caverlee, "Measuring and
    Mitigating Item Under-Recommendation Bias in Personalized Ranking Systems", SIGIR 2020;
    "Popularity-Opportunity Bias in Collaborative Filtering", WSDM 2021): the relative std over
    head and tail of P(rec@K | group, relevant) = (hits of the group's test targets in the top-K
    lists) / (the group's test targets), each summed over users. Follows Elliot's ``PopREO``
    (sisinflab/elliot, ``evaluation/metrics/bias/pop_reo``): population std, per-group sums
    over users, the short head/long tail split. Lower is better (0: a tail target is as likely
    to be recommended as a head one). NaN when one group has no test target."""

    def counts(self, ranked: RankedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        hits = ranked.hits[:, :self.k].sum()
        tail_hits = ranked.tail_hits[:, :self.k].sum()
        targets, tail_targets = ranked.n_targets.sum(), ranked.n_tail_targets.sum()
        return (torch.stack([hits - tail_hits, tail_hits]),
                torch.stack([targets - tail_targets, tail_targets]))


class PopRSP(PopularityParity):
    """Popularity-based ranking-based statistical parity (Zhu, Wang and Caverlee, SIGIR 2020 and
    WSDM 2021): the relative std over head and tail of P(rec@K | group) = (the group's items in
    the top-K lists) / (the group's items that are not the user's inputs, i.e. could have been
    recommended), each summed over users. Follows Elliot's ``PopRSP`` (sisinflab/elliot,
    ``evaluation/metrics/bias/pop_rsp``): the denominator excludes each user's own inputs.
    Lower is better (0: a candidate tail item is as likely to be shown as a head one). NaN when
    the lists came without the users' inputs (`RankedBatch.n_inputs` is None) or a group has no
    item."""

    def counts(self, ranked: RankedBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
        if ranked.n_inputs is None:
            return None
        top, present = ranked.top(self.k)
        listed = present.sum().double()
        tail_listed = (per_slot(self.tail, top) * present).sum().double()
        n_tail = self.tail.sum().double()
        group_size = torch.stack([self.tail.numel() - n_tail, n_tail])  # (2,)
        candidates = group_size * len(ranked.items) - ranked.n_inputs.double().sum(0)
        return torch.stack([listed - tail_listed, tail_listed]), candidates


class _UserGroupNDCG(UserAveraged):
    """NDCG@K over the users of one activity group (light or heavy users, by training
    interactions: `recozoo.data.contracts.heavy_user_mask`). NaN when no user of the group has a
    target, or when the users or the group of each user are unknown."""

    higher_is_better = True
    heavy: ClassVar[bool]

    def __init__(self, k: int, heavy_users: torch.Tensor | None = None, **kwargs):
        super().__init__(k, **kwargs)
        self.register_buffer("heavy_users", None if heavy_users is None else heavy_users.bool(),
                             persistent=False)

    def values(self, ranked: RankedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        value = ranked.per_user(F.ndcg, self.k)
        if self.heavy_users is None or ranked.users is None:
            return value, torch.zeros_like(value)
        in_group = self.heavy_users[ranked.users] == type(self).heavy
        return value, ((ranked.n_targets > 0) & in_group).to(value.dtype)


class LightUserNDCG(_UserGroupNDCG):
    """NDCG@K over light users (every user outside the heavy share)."""

    heavy = False


class HeavyUserNDCG(_UserGroupNDCG):
    """NDCG@K over heavy users (the top ``heavy_user_share`` of users by training
    interactions)."""

    heavy = True
