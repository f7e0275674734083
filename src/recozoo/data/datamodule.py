"""`RecDataModule`: the only DataModule. It prepares one dataset and serves the training view
each model asks for, plus one evaluation batch format for every model."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from recozoo.data.contracts import (
    DEFAULT_HEAVY_USER_SHARE,
    EVAL_SCORES_PER_BATCH,
    DatasetInfo,
    EvalBatch,
    Source,
    Splitter,
    TrainView,
    zero_one_sparse,
)
from recozoo.data.interactions import EVENT_NAMES, Interactions
from recozoo.data.popularity import DEFAULT_HEAD_SHARE, item_popularity
from recozoo.data.preprocess import Preprocessing, PreprocessReport
from recozoo.data.split import LeaveOneOut, hold_out_cold_items
from recozoo.distributed import UserShardSampler, per_rank_batch_size, rank_and_world_size

log = logging.getLogger(__name__)

# the training pairs are also held as a bit table (users x items bits) up to this size
TRAIN_BIT_TABLE_MAX_BYTES = 32 * 2**20

__all__ = ["EVAL_SCORES_PER_BATCH", "DatasetInfo", "EvalBatch", "RecDataModule", "TrainView"]

class UserItems:
    """Each user's items sorted by ``order`` (the timestamp, or the random key of a split whose
    held-out items are not the next ones: `RecDataModule._sequence_order_key`), ties in row
    order, CSR style, for fast batched lookup."""

    def __init__(self, user: np.ndarray, item: np.ndarray, order: np.ndarray | None,
                 n_users: int, extra: dict[str, np.ndarray] | None = None):
        # order None: the pairs are sorted by user and in order already (no sort of 10^7 rows)
        rows = np.lexsort((np.arange(len(user)), order, user)) if order is not None else None
        self.items = item[rows] if rows is not None else item
        self.extra = {k: (v[rows] if rows is not None else v) for k, v in (extra or {}).items()}
        counts = np.bincount(user, minlength=n_users)
        self.indptr = np.r_[0, np.cumsum(counts)]

    def lengths(self, users: np.ndarray) -> np.ndarray:
        return self.indptr[users + 1] - self.indptr[users]

    def distinct(self, n_items: int) -> UserItems:
        """Each user's distinct items in item order: the users' rows of the 0/1 interaction
        matrix, for what reads neither order nor repeats (``TrainView("user_rows")``, the seen
        pairs of evaluation batches), so that a batch's pairs need no sort of their own
        (ml-100k's 943 rows: 0.8 ms against 5.5)."""
        keys = torch.unique(torch.from_numpy(self.keys(n_items))).numpy()  # sorted
        return UserItems(keys // n_items, keys % n_items, None, len(self.indptr) - 1)

    def keys(self, n_items: int) -> np.ndarray:
        """``user * n_items + item`` of every pair, in this object's order (sorted, each once,
        for a `distinct` one)."""
        users = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        return users * n_items + self.items

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) is one of the pairs of this `distinct` object (each user's
        items sorted): a binary search of the query's own user's items, compiled
        (`recozoo.data.search_loops.rows_contain`). A search of all the pairs' keys instead takes
        ~23 steps over the whole array (16,384 queries among 8.6M random pairs of 572k users and
        302k items, one thread: 3.6 ms with the queries sorted, 13.8 unsorted). Against the
        same per-user search vectorised in NumPy (every query through as many halvings as the
        longest user needs), 16,384 queries among 8.8M pairs: 0.58 ms against 1.24."""
        if not len(self.items):
            return np.zeros(len(users), dtype=bool)
        from recozoo.data.search_loops import rows_contain
        return rows_contain(self.indptr, self.items, np.asarray(users), np.asarray(items))

    def positions(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``users``, position in ``items``) of every item of these users."""
        rows, offsets = _ragged(self.lengths(users))
        return rows, self.indptr[users][rows] + offsets

    def recent(self, users: np.ndarray, length: int, pad: int) -> np.ndarray:
        """(len(users), length) the newest ``length`` items, left-padded with ``pad``."""
        out = np.full((len(users), length), pad, dtype=np.int64)
        take = np.minimum(self.lengths(users), length)
        rows, offsets = _ragged(take)
        out[rows, length - take[rows] + offsets] = self.items[self.indptr[users + 1][rows]
                                                              - take[rows] + offsets]
        return out


def _ragged(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, offset within row) for rows of the given lengths: the index of a ragged array."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    offsets = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return rows, offsets


class _Rows(Dataset):
    """Row indices ``0..n-1`` (or the given values) fetched a whole batch at a time: the
    DataLoader hands ``__getitems__`` the batch's indices, so a batch of thousands of rows costs
    one array lookup instead of one Python call per row."""

    def __init__(self, n: int, values: np.ndarray | None = None):
        self.n, self.values = n, values

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int | np.ndarray) -> int | np.ndarray:
        if isinstance(index, np.ndarray):  # a whole batch (`ShuffledBatches`)
            return self.__getitems__(index)
        return int(self.values[index]) if self.values is not None else index

    def __getitems__(self, indices: list[int]) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        return self.values[indices] if self.values is not None else indices


class ShuffledBatches(DistributedSampler):
    """`DistributedSampler`'s order (a permutation drawn from seed + epoch, padded to a multiple
    of the processes, each rank its share) served as NumPy arrays of ``batch_size`` indices, the
    last one shorter: what a ``DataLoader`` of that sampler and batch size serves, without the
    Python lists of every index (at 10^7 training pairs, iterating those batches took 1.53 s an
    epoch). A `DistributedSampler`, so Lightning sets its epoch and injects no sampler of its
    own under DDP.

    Args:
        dataset: the rows (only its length is read).
        batch_size: indices per batch.
        **kwargs: `DistributedSampler`'s (``num_replicas``, ``rank``, ``seed``); always shuffled.
    """

    def __init__(self, dataset: Dataset, batch_size: int, **kwargs: Any):
        super().__init__(dataset, shuffle=True, **kwargs)
        self.batch_size = batch_size

    def __iter__(self) -> Any:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).numpy()
        if self.total_size > len(order):  # repeat the first ones, as DistributedSampler does
            order = np.concatenate([order, np.resize(order, self.total_size - len(order))])
        order = order[self.rank:self.total_size:self.num_replicas]
        for start in range(0, len(order), self.batch_size):
            yield order[start:start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)


#: splitmix64's increment and multipliers (Steele, Lea and Flood, OOPSLA 2014)
_GOLDEN, _MIX_1, _MIX_2 = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9),
                           np.uint64(0x94D049BB133111EB))


def counter_uniforms(counters: np.ndarray, key: int) -> np.ndarray:
    """Uniform floats in [0, 1), one per uint64 counter, each a function of (counter, key)
    alone: splitmix64's finaliser of ``counter * golden + key``, the top 53 bits. A counter-based
    generator: any subset of the draws, made in any order or process, comes out the same.

    Example:
        >>> counter_uniforms(np.arange(3, dtype=np.uint64), key=7).shape
        (3,)
    """
    with np.errstate(over="ignore"):
        x = counters.astype(np.uint64) * _GOLDEN + np.uint64(key)
        x ^= x >> np.uint64(30)
        x *= _MIX_1
        x ^= x >> np.uint64(27)
        x *= _MIX_2
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


class RecDataModule(L.LightningDataModule):
    """Loads, cleans and splits one dataset; serves training views and evaluation batches.

    Args:
        source: produces the raw ``Interactions``.
        preprocessing: the cleaning steps.
        split: the splitter (leave-one-out by default).
        seed: seed of the split and of negative sampling.
        head_share: share of items (by training count) that form the head.
        eval_batch_size: users per evaluation batch; None: as many as keep a batch's score
            matrix near ``EVAL_SCORES_PER_BATCH`` entries (all 943 users of ml-100k in one batch,
            ~1,440 users of a 47k-item catalogue), so small catalogues pay the per-batch cost once.
        history_len: how many recent items an evaluation batch carries per user.
        num_workers: DataLoader workers.
        negative_probabilities: maps training popularity (n_items,) to the probabilities of
            drawing each item as a negative (``debias=pop_neg``,
            `recozoo.debias.PopularityNegatives`); None or a None result: uniform.
        cold_items: share of the items held out of training and validation, their test rows
            kept (cold-start evaluation, `recozoo.data.split.hold_out_cold_items`); 0: none.
        heavy_user_share: the top share of users by training interactions that are heavy users
            (``ndcg_heavy_users@<k>``; `recozoo.data.contracts.heavy_user_mask`).
        val_users: the validations that select (every one inside the fit, early stopping and
            the best checkpoint, and a model's `choose_on_validation`) rank a fixed random
            sample of this many validation users when there are more, drawn once from
            ``seed``; the validation of the chosen weights (``every_validation_user``) and the
            test rank every user. None: every user always. A full-catalogue validation costs
            users x items, which grows with the square of the data while an epoch grows with
            it: on the 10^6-interaction shop (57,147 users, 46,600 items) one validation took
            9.8 s against a 2.3 s bpr epoch.

    Example:
        >>> dm = RecDataModule(ShopSource(n_users=200, n_items=100))
        >>> dm.setup()
        >>> dm.use_view(TrainView("pairs", batch_size=256))
    """

    def __init__(self, source: Source, preprocessing: Preprocessing | None = None,
                 split: Splitter | None = None, seed: int = 0,
                 head_share: float = DEFAULT_HEAD_SHARE,
                 eval_batch_size: int | None = None, history_len: int = 50, num_workers: int = 0,
                 negative_probabilities: Callable[[np.ndarray], np.ndarray | None] | None = None,
                 cold_items: float = 0.0,
                 heavy_user_share: float = DEFAULT_HEAVY_USER_SHARE,
                 val_users: int | None = None):
        super().__init__()
        if val_users is not None and (isinstance(val_users, bool) or int(val_users) < 1):
            raise ValueError(f"eval.val_users must be a positive number of users or null "
                             f"(every user), got {val_users}")
        self.val_users = None if val_users is None else int(val_users)
        #: rank every validation user, not the sample (`every_validation_user`)
        self._every_val_user = False
        self.heavy_user_share = float(heavy_user_share)
        self.cold_items = float(cold_items)
        self.negative_probabilities = negative_probabilities
        self.source = source
        self.preprocessing = preprocessing or Preprocessing()
        self.split = split or LeaveOneOut()
        self.seed = seed
        self.head_share = head_share
        self.eval_batch_size = eval_batch_size
        self.history_len = history_len
        self.num_workers = num_workers
        self.view = TrainView()
        self.data: Interactions | None = None
        self.report: PreprocessReport | None = None

    # ------------------------------------------------------------------ preparation
    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        data, self.report = self.preprocessing(self.source.load())
        self.data = data
        self.indices = self.split(data, self.seed)
        for reason, count in self.indices.dropped.items():
            log.info("split '%s' left %d rows out of every part: %s", self.split.name, count,
                     reason)
        cold = None
        if self.cold_items > 0:
            self.indices, cold = hold_out_cold_items(data, self.indices, self.cold_items,
                                                     self.seed)
            log.info("cold start: %d items held out of training; %d of %d test rows target "
                     "them", cold.sum(), cold[data.item[self.indices.test]].sum(),
                     len(self.indices.test))
        if len(self.indices.train) == 0:
            raise ValueError(f"split '{self.split.name}' left no training interactions in "
                             f"'{data.name}'")
        self.train = data.take(self.indices.train)
        valid, test = data.take(self.indices.valid), data.take(self.indices.test)
        input_rows = np.r_[self.indices.train, self.indices.valid]
        test_inputs = data.take(input_rows)
        order = self._sequence_order_key(data)  # what orders each user's items
        self.train_items = self._user_items(self.train, order[self.indices.train])
        self.eval_inputs = {"val": self.train_items,
                            "test": self._user_items(test_inputs, order[input_rows])}
        self.eval_targets = {"val": self._user_items(valid, order[self.indices.valid]),
                             "test": self._user_items(test, order[self.indices.test])}
        self.eval_users = {stage: np.unique(part.user) for stage, part in
                           (("val", valid), ("test", test))}
        popularity = item_popularity(self.train.item, data.n_items)
        self.info = DatasetInfo.from_popularity(
            name=data.name, n_users=data.n_users, item_popularity=popularity,
            head_share=self.head_share, item_text=data.items.text,
            item_category=(torch.as_tensor(data.items.category)
                           if data.items.category is not None else None),
            cold_items=torch.as_tensor(cold) if cold is not None else None,
            user_activity=torch.as_tensor(np.bincount(self.train.user, minlength=data.n_users)),
            heavy_user_share=self.heavy_user_share,
            train_pairs=torch.as_tensor(np.stack([self.train.user, self.train.item])),
            rating_mean=(float(self.train.rating.mean()) if self.train.rating is not None
                         else None),
            rating_range=((float(self.train.rating.min()), float(self.train.rating.max()))
                          if self.train.rating is not None else None),
            event_counts=(torch.as_tensor(np.bincount(self.train.event,
                                                      minlength=len(EVENT_NAMES)))
                          if self.train.event is not None else None),
        )
        # a data fact like the inputs themselves, counted once: each evaluation batch reads its
        # users' rows (counting a batch's pairs was a sort, 3.5-4 ms of ml-100k's ~35 ms test
        # stage, at every validation too)
        self.input_counts = {stage: self._count_inputs(stage) for stage in self.eval_inputs}
        # each stage's inputs as sets (distinct, in item order), once: an evaluation batch's
        # seen pairs, which models read as 0/1 rows (`EvalBatch.seen_distinct_sorted`), and the
        # training rows of the user_rows view (the validation's inputs are the training items)
        self.input_sets = {stage: inputs.distinct(data.n_items)
                           for stage, inputs in self.eval_inputs.items()}
        head = popularity[~self.info.tail_mask.numpy()].sum() / max(popularity.sum(), 1)
        log.info("%s: %d users, %d items, %d interactions (train %d, valid %d, test %d); "
                 "top %.0f%% of items get %.1f%% of training interactions", data.name,
                 data.n_users, data.n_items, len(data), len(self.train), len(valid), len(test),
                 100 * self.head_share, 100 * head)
        self.val_sample = self._sample_val_users(self.eval_users["val"])
        # the training pairs, for negative rejection: `train_sets` (each user's items sorted,
        # `UserItems.contains`), and where it is small, the same set as a bit table (one lookup
        # instead of a search)
        self._train_bits = None
        if data.n_users * data.n_items <= 8 * TRAIN_BIT_TABLE_MAX_BYTES:
            # set bit (key & 7) of byte key >> 3, most significant first (np.packbits' order),
            # without a one-byte-per-pair table in between (256 MB at the size limit)
            keys = self.train_sets.keys(data.n_items)
            self._train_bits = np.zeros((data.n_users * data.n_items + 7) // 8, dtype=np.uint8)
            np.bitwise_or.at(self._train_bits, keys >> 3, (128 >> (keys & 7)).astype(np.uint8))
        # cumulative distribution of negatives (None: uniform)
        probabilities = (self.negative_probabilities(popularity)
                         if self.negative_probabilities is not None else None)
        self._negative_cdf = None if probabilities is None else np.cumsum(probabilities)

    def _sequence_order_key(self, data: Interactions) -> np.ndarray:
        """The key each user's items are sorted by, for every row of ``data``: the timestamp,
        or under a split whose ``sequence_order`` is "shuffled" (a random split, whose held-out
        items are not the next ones) a random number under the seed, so that sequence models
        learn the user's items as a set, and one order holds for training and every stage's
        inputs."""
        order = getattr(self.split, "sequence_order", "time")
        if order == "time":
            return data.timestamp
        if order != "shuffled":
            raise ValueError(f"split.sequence_order must be 'time' or 'shuffled', got {order!r}")
        log.info("split '%s' holds out a random share of each user's items, not the next ones: "
                 "each user's items reach sequence models and evaluation histories in a random "
                 "order under the seed (split.sequence_order=time keeps time order)",
                 self.split.name)
        return np.random.default_rng([self.seed, 31]).random(len(data))

    def _user_items(self, part: Interactions, order: np.ndarray) -> UserItems:
        extra = {}
        if part.event is not None:
            extra["event"] = part.event
        if part.rating is not None:
            extra["rating"] = part.rating
        return UserItems(part.user, part.item, order, part.n_users, extra)

    def stats(self) -> dict[str, Any]:
        """Size and long-tail statistics of the prepared data (for logs and the README)."""
        pop = self.info.item_popularity.numpy()
        return {"users": self.info.n_users, "items": self.info.n_items,
                "interactions": len(self.data),
                "head_interaction_share": float(pop[~self.info.tail_mask.numpy()].sum()
                                                / max(pop.sum(), 1))}

    # ------------------------------------------------------------------ training views
    def use_view(self, view: TrainView) -> None:
        """Serve ``view`` from ``train_dataloader`` (called once the model is known)."""
        if view.kind not in ("pairs", "ratings", "user_rows", "sequences", "matrix"):
            raise ValueError(f"unknown training view '{view.kind}'")
        if view.kind == "ratings" and self.train.rating is None:
            log.warning("%s has no explicit ratings: the ratings view rates each training "
                        "interaction 1 and %d sampled unobserved item(s) per interaction 0",
                        self.info.name, view.n_negatives)
        self.view = view

    def train_dataloader(self) -> DataLoader:
        view = self.view
        if view.kind == "pairs":
            return self._shuffled(_Rows(len(self.train)), self._collate_pairs)
        if view.kind == "ratings":
            return self._shuffled(_Rows(len(self.train)), self._collate_ratings)
        if view.kind == "user_rows":
            users = np.flatnonzero(self.train_items.lengths(np.arange(self.info.n_users)) > 0)
            return self._shuffled(_Rows(len(users), users), self._collate_user_rows)
        if view.kind == "sequences":
            self._windows = self._sequence_windows(view.max_len)
            return self._shuffled(_Rows(len(self._windows[0])), self._collate_sequences)
        return DataLoader(_Rows(1), batch_size=1, collate_fn=self._collate_matrix)

    def _shuffled(self, dataset: Any, collate: Any) -> DataLoader:
        """A training loader whose order is a function of (seed, epoch) alone: Lightning sets
        the sampler's epoch, so a resumed run shuffles each epoch as an uninterrupted run did.
        Under DDP each rank takes its share, as with Lightning's own sampler, in batches of
        `per_rank_batch_size` (times the view's ``steps_per_load``), so the global batch and
        the updates per epoch are those of one process."""
        rank, world_size = rank_and_world_size()
        batch_size = per_rank_batch_size(self.view.batch_size, world_size)
        self._train_sampler = ShuffledBatches(dataset, batch_size * self.view.steps_per_load,
                                              num_replicas=world_size, rank=rank, seed=self.seed)
        if world_size > 1 and rank == 0:
            log.info("DDP: each of %d processes trains on %d of every batch of %d, so an epoch "
                     "makes one process's updates at its global batch and learning rate",
                     world_size, batch_size, self.view.batch_size)
        # batch_size None: the sampler hands over whole batches
        return DataLoader(dataset, batch_size=None, sampler=self._train_sampler,
                          collate_fn=collate, num_workers=self.num_workers)

    @property
    def train_sets(self) -> UserItems:
        """Each user's distinct training items, in item order: the validation's input set, as
        the validation's inputs are the training pairs."""
        return self.input_sets["val"]

    def _draw_key(self, attempt: int) -> int:
        """The key of the training negatives' draws of one rejection round: a function of
        (seed, epoch, round) alone."""
        epoch = self._train_sampler.epoch if hasattr(self, "_train_sampler") else 0
        return int(np.random.SeedSequence([self.seed, epoch, attempt]).generate_state(
            1, np.uint64)[0])

    def sample_negatives(self, users: np.ndarray, n: int, rng: np.random.Generator | None = None,
                         rows: np.ndarray | None = None) -> np.ndarray:
        """(len(users), n) items the user has not interacted with in training, drawn uniformly
        or, with ``negative_probabilities``, from that distribution.

        Args:
            users: the users to draw for.
            n: negatives per user.
            rng: the generator of the draws (None: one seeded from torch's generator).
            rows: the users' training rows (indices into ``train``): the draws are then keyed by
                (seed, epoch, row, slot) (`counter_uniforms`), not taken from ``rng``, so a row
                gets the same negatives however rows are batched, loaded (``steps_per_load``),
                shared among DDP processes or resumed.
        """
        n_items = self.info.n_items
        cdf = self._negative_cdf
        if rows is not None:
            counters = (np.asarray(rows, dtype=np.uint64)[:, None] * np.uint64(n)
                        + np.arange(n, dtype=np.uint64)).reshape(-1)

            def uniforms(slots: np.ndarray, attempt: int) -> np.ndarray:
                return counter_uniforms(counters[slots], self._draw_key(attempt))
        else:
            rng = rng or np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))

            def uniforms(slots: np.ndarray, attempt: int) -> np.ndarray:
                return rng.random(len(slots))

        def draw(slots: np.ndarray, attempt: int) -> np.ndarray:
            u = uniforms(slots, attempt)
            if cdf is None:
                return np.minimum((u * n_items).astype(np.int64), n_items - 1)
            return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), n_items - 1)

        check = np.arange(len(users) * n)  # the draws not yet known to be negatives
        negatives = draw(check, 0)
        owners = np.repeat(users, n)
        for attempt in range(1, 21):  # rejection: collisions are rare, a few rounds suffice
            bad = check[self._is_training_pair(owners[check], negatives[check])]
            if not len(bad):
                break
            negatives[bad] = draw(bad, attempt)
            check = bad  # only the redrawn ones need checking again
        return negatives.reshape(len(users), n)

    def _is_training_pair(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) is a training interaction: a lookup in the bit table where
        there is one (ml-100k, 2,048 pairs, one thread: 0.03 ms against 0.18 for a search of
        every pair's key; a BPR epoch's negatives 16 -> 8 ms), else a search of each user's own
        training items (`UserItems.contains`)."""
        if self._train_bits is not None:
            keys = users * self.info.n_items + items
            return (self._train_bits[keys >> 3] & (128 >> (keys & 7))) != 0
        return self.train_sets.contains(users, items)

    def _collate_pairs(self, index: list[int]) -> dict[str, torch.Tensor]:
        index = np.asarray(index)
        users, items = self.train.user[index], self.train.item[index]
        negatives = self.sample_negatives(users, self.view.n_negatives, rows=index)
        return {"user": torch.as_tensor(users), "item": torch.as_tensor(items),
                "negative": torch.as_tensor(negatives)}

    def _collate_ratings(self, index: list[int]) -> dict[str, torch.Tensor]:
        index = np.asarray(index)
        users, items = self.train.user[index], self.train.item[index]
        if self.train.rating is not None:
            return {"user": torch.as_tensor(users), "item": torch.as_tensor(items),
                    "rating": torch.as_tensor(self.train.rating[index], dtype=torch.float32)}
        # implicit feedback: observed items rated 1, sampled unobserved items rated 0
        negatives = self.sample_negatives(users, self.view.n_negatives, rows=index)
        n = negatives.shape[1]
        return {"user": torch.as_tensor(np.r_[users, np.repeat(users, n)]),
                "item": torch.as_tensor(np.r_[items, negatives.reshape(-1)]),
                "rating": torch.as_tensor(np.r_[np.ones(len(users)), np.zeros(len(users) * n)],
                                          dtype=torch.float32)}

    def _collate_user_rows(self, users: list[int]) -> dict[str, torch.Tensor]:
        users = np.asarray(users)
        rows, pos = self.train_sets.positions(users)  # in batch order, each row's items sorted
        rows, items = torch.as_tensor(rows), torch.as_tensor(self.train_sets.items[pos])
        shape = (len(users), self.info.n_items)
        if self.view.sparse_rows:
            matrix = zero_one_sparse(rows, items, shape, distinct_sorted=True)
        else:
            matrix = torch.zeros(shape)
            matrix[rows, items] = 1.0
        return {"user": torch.as_tensor(users), "rows": matrix}

    def _sequence_windows(self, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user, start, end) of windows of at most ``max_len + 1`` items, cut from the end of
        each user's training sequence so the most recent window is full."""
        lengths = self.train_items.lengths(np.arange(self.info.n_users))
        users = np.flatnonzero(lengths >= 2)
        # window k ends k * max_len items before the user's last (windows overlap by one item);
        # the last window is the first that reaches the user's first item
        n_windows = 1 + np.maximum(0, -(-(lengths[users] - max_len - 1) // max_len))
        rows, k = _ragged(n_windows)
        lo, hi = self.train_items.indptr[users][rows], self.train_items.indptr[users + 1][rows]
        ends = hi - k * max_len
        starts = np.maximum(lo, ends - (max_len + 1))
        return users[rows], starts, ends

    def _collate_sequences(self, index: list[int]) -> dict[str, torch.Tensor]:
        users, starts, ends = (w[np.asarray(index)] for w in self._windows)
        length = self.view.max_len
        pad = self.info.pad_item
        inputs = np.full((len(index), length), pad, dtype=np.int64)
        targets = np.full((len(index), length), -100, dtype=np.int64)  # ignore_index
        events = np.zeros((len(index), length), dtype=np.int64)
        items = self.train_items.items
        event = self.train_items.extra.get("event")
        n = ends - starts - 1
        rows, offsets = _ragged(n)
        cols, source = length - n[rows] + offsets, starts[rows] + offsets
        inputs[rows, cols] = items[source]
        targets[rows, cols] = items[source + 1]
        if event is not None:
            events[rows, cols] = event[source + 1]
        return {"user": torch.as_tensor(users), "input": torch.as_tensor(inputs),
                "target": torch.as_tensor(targets), "event": torch.as_tensor(events)}

    def _collate_matrix(self, _: list[int]) -> dict[str, torch.Tensor]:
        return {"user": torch.as_tensor(self.train.user), "item": torch.as_tensor(self.train.item)}

    # ------------------------------------------------------------------ evaluation
    def eval_batch(self, stage: str, users: np.ndarray) -> EvalBatch:
        """The evaluation batch of ``users`` for ``stage`` ("val" or "test")."""
        inputs, targets = self.eval_inputs[stage], self.eval_targets[stage]
        seen = self.input_sets[stage]
        users = np.ascontiguousarray(users, dtype=np.int64)  # any array of user indices
        seen_rows, seen_pos = seen.positions(users)
        target_rows, target_pos = targets.positions(users)
        rating = targets.extra.get("rating")
        return EvalBatch(
            user=torch.as_tensor(users),
            history=torch.as_tensor(inputs.recent(users, self.history_len, self.info.pad_item)),
            seen_rows=torch.as_tensor(seen_rows), seen_cols=torch.as_tensor(seen.items[seen_pos]),
            seen_distinct_sorted=True,
            target_rows=torch.as_tensor(target_rows),
            target_cols=torch.as_tensor(targets.items[target_pos]),
            target_rating=torch.as_tensor(rating[target_pos]) if rating is not None else None,
            input_counts=self.input_counts[stage][users],
        )

    def _count_inputs(self, stage: str) -> torch.Tensor:
        """(n_users, 2) every user's distinct input items of ``stage`` in the head and in the
        tail (`recozoo.metrics.ranking.inputs_per_group`)."""
        from recozoo.metrics.ranking import inputs_per_group  # metrics build on data

        inputs = self.eval_inputs[stage]
        n_users = len(inputs.indptr) - 1
        users = np.repeat(np.arange(n_users), np.diff(inputs.indptr))
        return inputs_per_group(torch.as_tensor(users), torch.as_tensor(inputs.items), n_users,
                                self.info.tail_mask)

    def _sample_val_users(self, users: np.ndarray) -> np.ndarray:
        """``val_users`` of the validation ``users``, ascending, drawn from the seed (all of
        them when there are not more)."""
        if self.val_users is None or len(users) <= self.val_users:
            return users
        sample = np.sort(np.random.default_rng([self.seed, 47]).choice(
            users, self.val_users, replace=False))
        log.info("validations that select rank %d of the %d validation users (eval.val_users; "
                 "the chosen weights' validation and the test rank every user)",
                 len(sample), len(users))
        return sample

    @contextlib.contextmanager
    def every_validation_user(self) -> Iterator[None]:
        """Validation loaders made inside this context rank every validation user instead of
        the ``val_users`` sample (the validation that reports the chosen weights and writes
        their lists)."""
        self._every_val_user, before = True, self._every_val_user
        try:
            yield
        finally:
            self._every_val_user = before

    def _eval_loader(self, stage: str) -> DataLoader:
        # under DDP each rank evaluates its own contiguous block of users, none twice
        users = (self.val_sample if stage == "val" and not self._every_val_user
                 else self.eval_users[stage])
        return DataLoader(_Rows(len(users), users), batch_size=self.users_per_eval_batch(),
                          sampler=UserShardSampler(len(users)),
                          collate_fn=lambda batch: self.eval_batch(stage, np.asarray(batch)),
                          num_workers=0)

    def transfer_batch_to_device(self, batch: Any, device: torch.device,
                                 dataloader_idx: int) -> Any:
        """Batches are built on the CPU: on a CPU run there is nothing to move (Lightning's
        generic walk over the batch costs ~1 ms a batch)."""
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def users_per_eval_batch(self) -> int:
        """``eval_batch_size``, or when it is None the users whose (users, n_items) scores fill
        about ``EVAL_SCORES_PER_BATCH`` entries (at least one)."""
        if self.eval_batch_size is not None:
            return int(self.eval_batch_size)
        return max(1, EVAL_SCORES_PER_BATCH // max(self.info.n_items, 1))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
