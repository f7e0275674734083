"""Deterministic splits into train / validation / test interactions.

Each splitter returns three integer position arrays into the (preprocessed) interactions.
Validation and test targets never appear in the training positions; what a model may *see* at
evaluation (its inputs) is decided by the DataModule: train for validation, train + validation
for test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recozoo.data.interactions import Interactions


@dataclass
class SplitIndices:
    """Positions of the train, validation and test rows."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def _groups(data: Interactions, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For positions sorted by user, the start of each user's run and its length."""
    users = data.user[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    lengths = np.diff(np.r_[starts, len(order)])
    return starts, lengths


@dataclass
class LeaveOneOut:
    """Per user, by time: the last interaction is test, the second last validation.

    Users with fewer than 3 interactions keep everything in training (they still train the
    model but are not evaluated).
    """

    name: str = "loo"

    def __call__(self, data: Interactions, seed: int) -> SplitIndices:
        order = data.chronological_order()
        starts, lengths = _groups(data, order)
        ends = starts + lengths
        evaluable = lengths >= 3
        test = order[ends[evaluable] - 1]
        valid = order[ends[evaluable] - 2]
        held = np.zeros(len(data), dtype=bool)
        held[test] = True
        held[valid] = True
        return SplitIndices(train=np.flatnonzero(~held), valid=valid, test=test)


def ratio_counts(n: np.ndarray, ratios: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Train/valid/test counts per user: floor of each held-out share, at least one held out
    when the share is positive and the user has enough rows (RecBole's rounding rule)."""
    n = np.asarray(n)
    valid = np.floor(ratios[1] * n).astype(np.int64)
    test = np.floor(ratios[2] * n).astype(np.int64)
    train = n - valid - test
    for held, share in ((test, ratios[2]), (valid, ratios[1])):
        bump = (share * n > 0) & (share * n < 1) & (train > 1)
        held[bump] += 1
        train[bump] -= 1
    return train, valid, test


@dataclass
class _RatioSplit:
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    name: str = "ratio"

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.ratios)
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
            raise ValueError(f"split.ratios must be three non-negative shares summing to 1, "
                             f"got {list(self.ratios)}")
        self.ratios = ratios

    def _order(self, data: Interactions, seed: int) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, data: Interactions, seed: int) -> SplitIndices:
        order = self._order(data, seed)
        starts, lengths = _groups(data, order)
        train_n, valid_n, _ = ratio_counts(lengths, self.ratios)
        rank = np.arange(len(order)) - np.repeat(starts, lengths)
        bound_train = np.repeat(train_n, lengths)
        bound_valid = np.repeat(train_n + valid_n, lengths)
        part = np.where(rank < bound_train, 0, np.where(rank < bound_valid, 1, 2))
        return SplitIndices(train=order[part == 0], valid=order[part == 1], test=order[part == 2])


@dataclass
class TemporalRatioSplit(_RatioSplit):
    """Per user, by time: the first share trains, the next validates, the last tests."""

    name: str = "temporal"

    def _order(self, data: Interactions, seed: int) -> np.ndarray:
        return data.chronological_order()


@dataclass
class RandomRatioSplit(_RatioSplit):
    """Per user, shuffled under the seed (RecBole's "RO" ordering with "RS" ratios)."""

    name: str = "random"

    def _order(self, data: Interactions, seed: int) -> np.ndarray:
        shuffle = np.random.default_rng(seed).permutation(len(data))
        return shuffle[np.argsort(data.user[shuffle], kind="stable")]


def hold_out_cold_items(data: Interactions, indices: SplitIndices, share: float,
                        seed: int) -> tuple[SplitIndices, np.ndarray]:
    """Make a random ``share`` of the catalogue cold: drop their training and validation rows,
    keep their test rows (``eval.cold_items``; cold-start evaluation).

    The cold items are drawn uniformly from all items under ``seed``; no model sees them in
    training, and they are not the user's inputs at evaluation either (their rows are gone from
    the training and validation parts, which form the inputs).

    Returns:
        The filtered split and the (n_items,) boolean mask of cold items.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"eval.cold_items must be a share of the items in [0, 1), got {share}")
    cold = np.zeros(data.n_items, dtype=bool)
    n_cold = int(round(share * data.n_items))
    cold[np.random.default_rng([seed, 17]).choice(data.n_items, n_cold, replace=False)] = True
    train = indices.train[~cold[data.item[indices.train]]]
    valid = indices.valid[~cold[data.item[indices.valid]]]
    return SplitIndices(train=train, valid=valid, test=indices.test), cold
