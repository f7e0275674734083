"""Configurable cleaning between a source and the split, with a count of every row dropped."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from recozoo.data.interactions import EVENT_CODES, Interactions

log = logging.getLogger(__name__)


class EmptyDatasetError(ValueError):
    """Raised when filtering leaves nothing to train on."""


@dataclass
class PreprocessReport:
    """What each step removed, in order, plus the size before and after."""

    rows_in: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    rows_out: int = 0

    def add(self, step: str, count: int) -> None:
        if count:
            self.dropped[step] = self.dropped.get(step, 0) + int(count)

    def summary(self) -> str:
        steps = ", ".join(f"{k}: {v}" for k, v in self.dropped.items()) or "nothing"
        return f"{self.rows_in} rows in, {self.rows_out} kept; dropped {steps}"


@dataclass
class Preprocessing:
    """Cleaning steps applied in this order.

    Args:
        min_rating: keep rows with ``rating >= min_rating`` (implicit feedback); None keeps all.
        events: keep only these event types (names from ``EVENT_NAMES``); None keeps all.
        dedupe: keep one row per (user, item): the earliest, carrying the strongest event
            and the latest rating.
        kcore: iteratively drop users and items with fewer than ``kcore`` interactions.
        min_user_interactions: drop users with fewer interactions (after k-core); leave-one-out
            needs 3 (train, validation, test).
    """

    min_rating: float | None = None
    events: list[str] | None = None
    dedupe: bool = True
    kcore: int = 0
    min_user_interactions: int = 3

    def __call__(self, data: Interactions) -> tuple[Interactions, PreprocessReport]:
        report = PreprocessReport(rows_in=len(data))
        if self.min_rating is not None:
            if data.rating is None:
                raise ValueError(
                    f"min_rating={self.min_rating} was set but dataset '{data.name}' has no ratings")
            keep = data.rating >= self.min_rating
            report.add(f"rating < {self.min_rating}", (~keep).sum())
            data = data.take(keep)
        if self.events is not None:
            unknown = set(self.events) - set(EVENT_CODES)
            if unknown:
                raise ValueError(f"unknown event types {sorted(unknown)}; known: {list(EVENT_CODES)}")
            if data.event is None:
                raise ValueError(f"events={self.events} was set but '{data.name}' has no event types")
            keep = np.isin(data.event, [EVENT_CODES[e] for e in self.events])
            report.add("event type filtered", (~keep).sum())
            data = data.take(keep)
        if self.dedupe:
            before = len(data)
            data = dedupe(data)
            report.add("duplicate (user, item)", before - len(data))
        if self.kcore > 0:
            before = len(data)
            data = kcore_filter(data, self.kcore)
            report.add(f"{self.kcore}-core", before - len(data))
        if self.min_user_interactions > 0:
            counts = np.bincount(data.user, minlength=data.n_users)
            keep = counts[data.user] >= self.min_user_interactions
            report.add(f"users with < {self.min_user_interactions} interactions", (~keep).sum())
            data = data.take(keep)
        if len(data) == 0:
            raise EmptyDatasetError(
                f"dataset '{data.name}' is empty after preprocessing ({report.summary()}); "
                "lower data.preprocess.kcore / min_user_interactions or data.min_rating")
        data = data.compact()
        report.rows_out = len(data)
        log.info("preprocessing %s: %s", data.name, report.summary())
        return data, report


def dedupe(data: Interactions) -> Interactions:
    """One row per (user, item): the earliest time, the strongest event, the latest rating."""
    order = np.lexsort((data.timestamp, data.item, data.user))
    key = data.user[order] * data.n_items + data.item[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    group = np.cumsum(first) - 1
    keep = order[first]
    out = data.take(keep)
    if data.event is not None:
        strongest = np.zeros(first.sum(), dtype=np.int8)
        np.maximum.at(strongest, group, data.event[order])
        out.event = strongest
    if data.rating is not None:
        last = np.zeros(first.sum(), dtype=np.int64)
        last[group] = order  # later rows of a group overwrite earlier ones
        out.rating = data.rating[last]
    # back to chronological file order
    resort = np.argsort(keep, kind="stable")
    return out.take(resort)


def kcore_filter(data: Interactions, k: int) -> Interactions:
    """Iteratively drop users and items with fewer than ``k`` interactions until stable."""
    keep = np.ones(len(data), dtype=bool)
    while True:
        users = np.bincount(data.user[keep], minlength=data.n_users)
        items = np.bincount(data.item[keep], minlength=data.n_items)
        new_keep = keep & (users[data.user] >= k) & (items[data.item] >= k)
        if new_keep.sum() == keep.sum():
            return data.take(keep)
        keep = new_keep
