"""Deterministic splits into train / validation / test interactions.

Each splitter returns three integer position arrays into the (preprocessed) interactions.
Validation and test targets never appear in the training positions; what a model may *see* at
evaluation (its inputs) is decided by the DataModule: train for validation, train + validation
for test.

A splitter also says in which order a user's items reach sequence models and evaluation histories
(``sequence_order``): "time" where the held-out items are the next ones (leave-one-out, the
temporal splits), "shuffled" where they are a random share of the user's items (`RandomRatioSplit`):
there the next item in time is not what is measured, and sequence models trained on time order
rank at popularity's level (ml-100k, seeds 1-5), so each user's items come in a random order
under the seed (`RecDataModule`). ``split.sequence_order=time`` keeps time order anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from recozoo.data.interactions import Interactions


@dataclass
class SplitIndices:
    """Positions of the train, validation and test rows; ``dropped`` counts the rows a split
    left out of every part, by reason (only `GlobalTemporalSplit` leaves rows out)."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)


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
    sequence_order: str = "time"

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


def check_ratios(ratios: Any) -> tuple[float, float, float]:
    """``split.ratios`` as three floats; ValueError unless three non-negative shares summing
    to 1."""
    shares = tuple(float(r) for r in ratios)
    if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1) > 1e-6:
        raise ValueError(f"split.ratios must be three non-negative shares summing to 1, "
                         f"got {list(ratios)}")
    return shares  # type: ignore[return-value]


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
    sequence_order: str = "time"

    def __post_init__(self) -> None:
        self.ratios = check_ratios(self.ratios)

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
    """Per user, shuffled under the seed (RecBole's "RO" ordering with "RS" ratios); the users'
    items reach sequence models in a random order too (the module docstring says why)."""

    name: str = "random"
    sequence_order: str = "shuffled"

    def _order(self, data: Interactions, seed: int) -> np.ndarray:
        shuffle = np.random.default_rng(seed).permutation(len(data))
        return shuffle[np.argsort(data.user[shuffle], kind="stable")]


def _time(value: Any, key: str) -> float:
    """A cut-off as a number in the data's time unit: a number as it is, a date or date-time
    string (UTC unless it names a zone) as Unix seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        stamp = None
    if stamp is None or pd.isna(stamp):
        raise ValueError(f"split.{key} must be a time in the data's unit (e.g. Unix seconds) or a "
                         f"date such as 2018-03-01, got {value!r}")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return float(stamp.timestamp())


@dataclass
class GlobalTemporalSplit:
    """One cut-off time for all users (``split=global_temporal``): every interaction before the
    validation cut-off trains, those from it up to the test cut-off validate, the rest test.
    Nothing a model trains on happened after anything it is tested on.

    The cut-offs are explicit (``valid_from`` and ``test_from``, both or neither: numbers in the
    data's time unit, or dates such as ``"1998-03-01"``, read as UTC Unix seconds) or, when both
    are null, the times at the ``ratios`` quantiles of all interactions: the validation cut-off
    is the time of the interaction at position ``round(ratios[0] * n)`` in time order, the test
    cut-off the one at ``round((ratios[0] + ratios[1]) * n)``. Interactions at one time are
    never split: ties at a cut-off go to the later part, so the shares are at most the ratios.

    Held-out rows are kept where they can be evaluated; the others are left out of every part
    and counted in `SplitIndices.dropped` (the DataModule logs the counts):

    - rows of users with no training interaction (first seen after the validation cut-off):
      such users are not evaluated;
    - rows of items with no training interaction (first seen after the validation cut-off),
      with ``new_items="drop"`` (default). With ``"keep"`` they stay as targets: tail items
      with training popularity 0, which only a model that reads item text can rank;
    - rows whose (user, item) is already among that user's inputs of the stage (training rows
      for validation, training and validation rows for test; a repeat, which
      ``data.preprocess.dedupe=true`` removes): inputs are masked before ranking, so such a
      target could never be hit.

    A dropped row is no one's input either: at test time the inputs are the kept training and
    validation rows.

    Args:
        ratios: train/validation/test shares of all interactions, by time.
        valid_from: explicit validation cut-off (null: from ``ratios``).
        test_from: explicit test cut-off (null: from ``ratios``).
        new_items: ``drop`` or ``keep`` the held-out rows of items first seen after the cut-off.

    Example:
        ``python train.py split=global_temporal split.valid_from=1998-03-01
        split.test_from=1998-03-15`` or ``split=global_temporal split.ratios=[0.8,0.1,0.1]``.
    """

    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    valid_from: str | float | None = None
    test_from: str | float | None = None
    new_items: Literal["drop", "keep"] = "drop"
    name: str = "global_temporal"
    sequence_order: str = "time"

    def __post_init__(self) -> None:
        self.ratios = check_ratios(self.ratios)
        if self.new_items not in ("drop", "keep"):
            raise ValueError(f"split.new_items must be 'drop' or 'keep', got {self.new_items!r}")
        if (self.valid_from is None) != (self.test_from is None):
            raise ValueError("split.valid_from and split.test_from go together: set both "
                             "(explicit cut-offs) or neither (cut-offs from split.ratios); got "
                             f"valid_from={self.valid_from!r}, test_from={self.test_from!r}")

    def cutoffs(self, timestamp: np.ndarray) -> tuple[float, float]:
        """(validation cut-off, test cut-off) for interactions at ``timestamp`` (inf: none)."""
        if self.valid_from is not None:
            valid, test = _time(self.valid_from, "valid_from"), _time(self.test_from, "test_from")
            if valid > test:
                raise ValueError(f"split.valid_from ({self.valid_from}) is after split.test_from "
                                 f"({self.test_from})")
            return valid, test
        ordered = np.sort(timestamp)

        def at(share: float) -> float:
            position = int(round(share * len(ordered)))
            return float(ordered[position]) if position < len(ordered) else math.inf

        return at(self.ratios[0]), at(self.ratios[0] + self.ratios[1])

    def __call__(self, data: Interactions, seed: int) -> SplitIndices:
        """The split by time (``seed`` is unused: time fixes every row)."""
        time = data.timestamp
        valid_from, test_from = self.cutoffs(time)
        part = np.where(time < valid_from, 0, np.where(time < test_from, 1, 2))  # 0/1/2
        span = f"the timestamps span {time.min():g}..{time.max():g}" if len(time) else "no rows"
        if not (part == 0).any():
            raise ValueError(f"split=global_temporal: no interaction before the validation "
                             f"cut-off {valid_from:g}; {span}")
        if not (part == 2).any() and math.isfinite(test_from):
            raise ValueError(f"split=global_temporal: no interaction at or after the test "
                             f"cut-off {test_from:g}; {span}")
        train = part == 0
        keep = np.ones(len(data), dtype=bool)
        dropped: dict[str, int] = {}

        def drop(rows: np.ndarray, reason: str) -> None:
            rows = rows & keep & ~train
            if rows.any():
                dropped[reason] = int(rows.sum())
                keep[rows] = False

        trained_user = np.bincount(data.user[train], minlength=data.n_users) > 0
        drop(~trained_user[data.user], "held-out rows of users with no training interaction "
             "(first seen after the cut-off; not evaluated)")
        if self.new_items == "drop":
            trained_item = np.bincount(data.item[train], minlength=data.n_items) > 0
            drop(~trained_item[data.item], "held-out rows of items with no training "
                 "interaction (first seen after the cut-off; split.new_items=drop)")
        pair = data.user.astype(np.int64) * data.n_items + data.item
        repeat = (part == 1) & np.isin(pair, pair[train])
        test_inputs = train | ((part == 1) & keep & ~repeat)
        repeat |= (part == 2) & np.isin(pair, pair[test_inputs])
        drop(repeat, "held-out rows whose (user, item) is already among the user's inputs "
             "(masked at evaluation, so never a hit)")
        return SplitIndices(train=np.flatnonzero(train), valid=np.flatnonzero(keep & (part == 1)),
                            test=np.flatnonzero(keep & (part == 2)), dropped=dropped)


@dataclass
class PresetSplit:
    """Train/validation/test rows listed in files (``split=preset``), for instance RecBole's
    exact splits, so that two libraries are scored on the same rows.

    Each file is a table with a header naming the external user and item id columns (other
    columns are ignored; a RecBole type suffix such as ``user_id:token`` is dropped). A listed
    (user, item) pair names the one data row with those ids, so the data must not repeat pairs
    (``data.preprocess.dedupe=true``). Validation and test are the listed rows. Training is every
    other row: a training file that lists only training *targets* (RecBole's sequential protocol
    leaves out each user's first item) still gives the whole history; the training file is only
    checked against the data, and ``train: null`` skips it.

    Args:
        folder: the folder holding the files.
        train: the training file in ``folder`` (null: none, every row not held out trains).
        valid: the validation file in ``folder``.
        test: the test file in ``folder``.
        user_column: header of the external user id column.
        item_column: header of the external item id column.
        sep: the column separator.
        sequence_order: "time", or "shuffled" for the rows of a random split (the module
            docstring says why).

    Example:
        ``python train.py data=atomic data.path=<folder> data.name=ml-100k split=preset
        split.folder=<splits>/general_RO_811`` (RecBole's benchmark files:
        ``split.train=ml-100k.train.inter split.valid=ml-100k.valid.inter
        split.test=ml-100k.test.inter``).
    """

    folder: str
    train: str | None = "train.tsv"
    valid: str = "valid.tsv"
    test: str = "test.tsv"
    user_column: str = "user_id"
    item_column: str = "item_id"
    sep: str = "\t"
    name: str = "preset"
    sequence_order: str = "time"

    def _path(self, part: str) -> Path:
        return Path(self.folder) / str(getattr(self, part))

    def _read(self, part: str) -> pd.DataFrame:
        """The (user_id, item_id) rows of one file, as strings, in file order."""
        path = self._path(part)
        if not path.is_file():
            raise FileNotFoundError(f"split=preset: the {part} file {path} is missing "
                                    f"(split.folder={self.folder}, split.{part}="
                                    f"{getattr(self, part)})")
        frame = pd.read_csv(path, sep=self.sep, dtype=str, keep_default_na=False)
        columns = {str(column).split(":", 1)[0]: column for column in frame.columns}
        wanted = (self.user_column, self.item_column)
        missing = [column for column in wanted if column not in columns]
        if missing:
            raise ValueError(f"{path}: expected columns {list(wanted)} (split.user_column, "
                             f"split.item_column), missing {missing}; found "
                             f"{list(frame.columns)}")
        return pd.DataFrame({"user_id": frame[columns[self.user_column]].str.strip(),
                             "item_id": frame[columns[self.item_column]].str.strip()})

    def _positions(self, part: str, rows: pd.DataFrame) -> np.ndarray:
        """Data positions of the rows listed in one file; every listed pair must be a data row,
        listed once."""
        path = self._path(part)
        found = self._read(part).merge(rows, on=["user_id", "item_id"], how="left")
        lost = found["position"].isna()
        if lost.any():
            first = found[lost].iloc[0]
            raise ValueError(f"{path}: {int(lost.sum())} of {len(found)} rows are not in the "
                             f"data, e.g. user {first.user_id} item {first.item_id} (different "
                             "ids, or rows that preprocessing dropped)")
        repeated = found.duplicated(["user_id", "item_id"])
        if repeated.any():
            first = found[repeated].iloc[0]
            raise ValueError(f"{path}: {int(repeated.sum())} rows are listed twice, e.g. user "
                             f"{first.user_id} item {first.item_id}")
        return found["position"].to_numpy(dtype=np.int64)

    def __call__(self, data: Interactions, seed: int) -> SplitIndices:
        """The split the files describe (``seed`` is unused: the files fix every row)."""
        rows = pd.DataFrame({"user_id": data.user_ids[data.user].astype(str),
                             "item_id": data.item_ids[data.item].astype(str),
                             "position": np.arange(len(data))})
        repeated = rows.duplicated(["user_id", "item_id"])
        if repeated.any():
            first = rows[repeated].iloc[0]
            raise ValueError(f"split=preset ({self.folder}): the data repeats {int(repeated.sum())}"
                             f" (user, item) pairs, e.g. user {first.user_id} item "
                             f"{first.item_id}, so a listed pair cannot name one row; dedupe "
                             "the data first (data.preprocess.dedupe=true)")
        valid, test = self._positions("valid", rows), self._positions("test", rows)
        part = np.zeros(len(data), dtype=np.int8)  # 0 train, 1 valid, 2 test
        part[valid] = 1
        both = test[part[test] == 1]
        if len(both):
            raise ValueError(f"{self._path('test')}: {len(both)} rows are also in "
                             f"{self._path('valid')}, e.g. user {rows.user_id[both[0]]} item "
                             f"{rows.item_id[both[0]]}")
        part[test] = 2
        if self.train is not None:
            listed = self._positions("train", rows)
            held = listed[part[listed] != 0]
            if len(held):
                raise ValueError(f"{self._path('train')}: {len(held)} rows are also held out "
                                 "for validation or test, e.g. user "
                                 f"{rows.user_id[held[0]]} item {rows.item_id[held[0]]}")
        return SplitIndices(train=np.flatnonzero(part == 0), valid=valid, test=test)


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
    return SplitIndices(train=train, valid=valid, test=indices.test,
                        dropped=indices.dropped), cold
