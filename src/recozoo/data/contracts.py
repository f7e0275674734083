"""The typed contracts between the data pipeline, models and evaluation: what a model trains on
(`TrainView`), what it may know of the dataset (`DatasetInfo`) and what it scores
(`EvalBatch`). `recozoo.data.datamodule.RecDataModule` produces them."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import scipy.sparse
import torch

from recozoo.data.interactions import Interactions
from recozoo.data.popularity import popularity_buckets, tail_mask
from recozoo.data.split import SplitIndices
from recozoo.runtime import l2_cache_bytes

TrainViewKind = Literal["pairs", "ratings", "user_rows", "sequences", "matrix"]

#: the share of users (by training interactions) that are heavy users, unless
#: ``eval.heavy_user_share`` says otherwise (``ndcg_heavy_users@<k>`` / ``ndcg_light_users@<k>``)
DEFAULT_HEAVY_USER_SHARE = 0.2


def heavy_user_mask(user_activity: np.ndarray | torch.Tensor,
                    share: float = DEFAULT_HEAVY_USER_SHARE) -> torch.Tensor:
    """(n_users,) True for heavy users: the top ``share`` of all users by training interactions,
    exactly ``round(share * n_users)`` of them, ties broken by user index (the rule that makes
    the item head, `recozoo.data.popularity.tail_mask`). Every other user is light.

    Example:
        >>> heavy_user_mask(np.array([5, 1, 9, 0, 2]), 0.4).tolist()
        [True, False, True, False, False]
    """
    if not 0.0 <= float(share) <= 1.0:
        raise ValueError(f"eval.heavy_user_share must be a share of the users in [0, 1], "
                         f"got {share}")
    activity = np.asarray(user_activity, dtype=np.float64)
    return torch.as_tensor(~tail_mask(activity, float(share)))


class Source(Protocol):
    """Anything with ``load() -> Interactions`` (see ``recozoo.data.sources``)."""

    def load(self) -> Interactions: ...


class Splitter(Protocol):
    name: str

    def __call__(self, data: Interactions, seed: int) -> SplitIndices: ...



def distinct_pairs(rows: torch.Tensor, cols: torch.Tensor, n_cols: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct (row, col) pairs, sorted by row and then col (a coalesced COO matrix's
    order): one sort of ``row * n_cols + col``. Two threads, 80,000 pairs of 943 x 1,682:
    4.2 ms, against 6.9 ms for building a sparse matrix and coalescing it."""
    keys = torch.unique(rows.long() * n_cols + cols.long())  # sorted; each pair once
    return keys // n_cols, keys % n_cols


def zero_one_sparse(rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int],
                    distinct_sorted: bool = False) -> torch.Tensor:
    """The coalesced sparse COO 0/1 matrix of ``shape`` with a 1 at each (row, col) pair; a
    repeated pair counts once. The ids are not checked (as torch checks none by default):
    `EvalBatch.seen_sparse` checks those that may come from outside the DataModule.
    ``distinct_sorted``: the pairs are distinct and sorted by row, then col, already (the
    caller's guarantee; `distinct_pairs` is skipped)."""
    if not distinct_sorted:
        rows, cols = distinct_pairs(rows, cols, shape[1])
    return torch.sparse_coo_tensor(torch.stack([rows, cols]),
                                   torch.ones(len(rows), device=rows.device), shape,
                                   is_coalesced=True, check_invariants=False)


#: the narrowest block of columns `column_blocks` makes: narrower ones lose more to the many
#: short rows each bag adds than they gain from the cache (3,706 items, 64 columns: 28 ms
#: against 18 at 128 and 36 unblocked)
MIN_BLOCK_COLUMNS = 128
#: the most bytes of a matrix `column_blocks` copies (the blocks are a second copy of it)
MAX_BLOCKED_BYTES = 1 << 28


@dataclass(frozen=True)
class ColumnBlocks:
    """A dense (m, n) matrix held again as contiguous blocks of its columns, each small enough
    to stay in one core's L2 cache (`column_blocks` makes them); `zero_one_product` adds the
    rows of one block at a time.

    Why: a user's score row adds ~50-200 rows of the whole matrix, and the next user adds
    others; when the matrix does not fit in the core's own cache each row comes from the
    shared L3 or memory, while one block's rows are read from L2 by every user in turn.
    ml-100k's validation batch in EASE's weights (943 users, 80,000 inputs, 1,682 x 1,682,
    2 threads, 2 MiB L2): 4.1-4.4 ms in blocks of 256 columns against 7.6-7.8 ms; random
    inputs skewed like ratings into 3,706 x 3,706 (MovieLens 1M's items, 1,024 users): 17.9
    against 35.9 ms in blocks of 128. The sums are the same, to the bit.
    """

    blocks: tuple[torch.Tensor, ...]  # (m, width) each, the last one narrower

    @property
    def shape(self) -> tuple[int, int]:
        return self.blocks[0].shape[0], sum(block.shape[1] for block in self.blocks)


def column_blocks(matrix: torch.Tensor) -> ColumnBlocks | torch.Tensor:
    """``matrix`` (m, n) as `ColumnBlocks` of the widest multiple of 64 columns whose block
    fits one core's L2 cache (`recozoo.runtime.l2_cache_bytes`), where that is at least
    `MIN_BLOCK_COLUMNS` and less than n; else ``matrix`` itself: not a dense CPU matrix, too
    tall to block (an L2 of 2 MiB blocks matrices of up to 4,096 rows of float32), or above
    `MAX_BLOCKED_BYTES` (8,000 x 8,000 in blocks of 64 columns was slower than unblocked)."""
    if (matrix.layout != torch.strided or matrix.device.type != "cpu" or matrix.dim() != 2
            or matrix.numel() * matrix.element_size() > MAX_BLOCKED_BYTES):
        return matrix
    n_rows, n_cols = matrix.shape
    width = l2_cache_bytes() // max(n_rows * matrix.element_size(), 1) // 64 * 64
    if width < MIN_BLOCK_COLUMNS or width >= n_cols:
        return matrix
    return ColumnBlocks(tuple(matrix[:, start:start + width].contiguous()
                              for start in range(0, n_cols, width)))


def zero_one_product(rows: torch.Tensor, cols: torch.Tensor, n_rows: int,
                     matrix: torch.Tensor | ColumnBlocks, distinct_sorted: bool = False,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """(n_rows, d): ``zero_one_sparse(rows, cols, (n_rows, len(matrix))) @ matrix``, each row
    the sum of ``matrix``'s rows at that row's distinct columns, as one embedding bag per row:
    the same sums in the same order (equal to the bit), without a sparse matrix. 2 threads,
    with the 0/1 matrix built each time: 943 x 1,682 at 5% @ 1,682 x 1,682: 29 ms with
    ``torch.sparse.mm``, 17 ms; 1,024 x 20,000 at 0.2% @ 20,000 x 2,000: 40 ms, 18 ms.
    ``matrix`` in `ColumnBlocks`: one block at a time, written into ``out`` (n_rows, d) where
    given. ``distinct_sorted`` as in `zero_one_sparse`."""
    if not distinct_sorted:
        rows, cols = distinct_pairs(rows, cols, matrix.shape[0])
    starts = torch.searchsorted(rows, torch.arange(n_rows, device=rows.device))
    if isinstance(matrix, ColumnBlocks):
        first = matrix.blocks[0]
        if out is None:
            out = torch.empty(n_rows, matrix.shape[1], dtype=first.dtype, device=first.device)
        start = 0
        for block in matrix.blocks:
            width = block.shape[1]
            out[:, start:start + width] = torch.nn.functional.embedding_bag(
                cols, block, starts, mode="sum")
            start += width
        return out
    return torch.nn.functional.embedding_bag(cols, matrix, starts, mode="sum")


#: entries of a sparse matrix's rows that `zero_one_csr_product` adds at once (its index arrays
#: take 24 bytes an entry; on a CPU, the most a chunk of users' sparse product holds)
CSR_SUM_ENTRIES = 1 << 22


def zero_one_csr_product(rows: torch.Tensor, cols: torch.Tensor, n_rows: int,
                         matrix: torch.Tensor, distinct_sorted: bool = False,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """(n_rows, n): `zero_one_product` of a sparse CSR ``matrix`` (m, n): each row the sum of
    ``matrix``'s rows at that row's distinct columns, in a zeroed dense result (``out`` where
    given). The work is the sum of the inputs' row lengths: on the 10^6 shop (ItemKNN, 1,440
    users a batch, 46,600 items, 200 neighbours) ~40 million entries a batch, as popular items
    are the neighbours of many.

    On a CPU the sums are SciPy's CSR @ CSR product (`_csr_product_on_cpu`); elsewhere they are
    added entry by entry, `CSR_SUM_ENTRIES` entries at a time. Both add each row's inputs in
    the same order, so the results are equal to the bit. torch's own CSR @ CSR product on a CPU
    kept memory it never gave back (ItemKNN on the 10^6 shop: ~180 MB a batch, a 21 GB peak)."""
    if not distinct_sorted:
        rows, cols = distinct_pairs(rows, cols, matrix.shape[0])
    crow, value = matrix.crow_indices(), matrix.values()
    if out is None:
        out = torch.zeros(n_rows, matrix.shape[1], dtype=value.dtype, device=value.device)
    else:
        out.zero_()
    if len(cols) == 0:
        return out
    first = crow[cols]  # (P,) where each input's row of the matrix starts
    counts = crow[cols + 1] - first  # (P,) and how many entries it has
    if value.device.type == "cpu" and value.dtype in (torch.float32, torch.float64):
        _csr_product_on_cpu(rows, cols, counts, matrix, out)
    else:
        _csr_product_by_entries(rows, first, counts, matrix, out)
    return out


def _csr_product_by_entries(rows: torch.Tensor, first: torch.Tensor, counts: torch.Tensor,
                            matrix: torch.Tensor, out: torch.Tensor) -> None:
    """`zero_one_csr_product` on any device: the entries of the inputs' rows of ``matrix``
    added one by one into the zeroed ``out`` (n_rows, n), `CSR_SUM_ENTRIES` at a time.
    ``first`` and ``counts``: (P,) where each input's row of ``matrix`` starts and its length."""
    n_cols, col, value = matrix.shape[1], matrix.col_indices(), matrix.values()
    run_start = counts.cumsum(0) - counts  # (P,) where its entries start among all inputs'
    total = int(run_start[-1] + counts[-1])
    # chunks of inputs with about CSR_SUM_ENTRIES entries each
    limits = torch.tensor(range(CSR_SUM_ENTRIES, total, CSR_SUM_ENTRIES), dtype=run_start.dtype,
                          device=counts.device)
    bounds = [0, *torch.searchsorted(run_start, limits).tolist(), len(rows)]
    flat = out.view(-1)
    for lo, hi in itertools.pairwise(bounds):
        if lo == hi:
            continue
        pair = torch.repeat_interleave(torch.arange(lo, hi, device=counts.device),
                                       counts[lo:hi])  # (T,) the input of each entry
        entry = torch.arange(len(pair), device=counts.device) + run_start[lo]
        position = first[pair] + (entry - run_start[pair])  # (T,) into the matrix's entries
        flat.index_add_(0, rows[pair] * n_cols + col[position], value[position])


def _csr_product_on_cpu(rows: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor,
                        matrix: torch.Tensor, out: torch.Tensor) -> None:
    """`zero_one_csr_product` on a CPU: SciPy's CSR @ CSR product of the 0/1 rows (distinct,
    sorted) with ``matrix``, made dense into the zeroed ``out`` (n_rows, n). Users go in chunks
    of about `CSR_SUM_ENTRIES` entries (a chunk's sparse product holds at most that many), on
    as many threads as torch uses (SciPy's sparse kernels release the GIL); chunks write
    disjoint rows. ``counts``: (P,) the length of each input's row of ``matrix``.

    One batch of the 10^6 shop's shape (1,440 users, 46,600 items, 28 M entries; 2 threads):
    0.23 s against 0.93 s adding entry by entry (0.42 s on one thread)."""
    n_rows = out.shape[0]
    weights = scipy.sparse.csr_array(  # shares the tensors' memory
        (matrix.values().numpy(), matrix.col_indices().numpy(), matrix.crow_indices().numpy()),
        shape=tuple(matrix.shape))
    rows_np, cols_np = rows.numpy(), cols.numpy()
    starts = np.searchsorted(rows_np, np.arange(n_rows + 1))  # (n_rows + 1,) each row's inputs
    entries = np.bincount(rows_np, weights=counts.numpy(), minlength=n_rows).cumsum()
    bounds = np.unique(np.concatenate(
        [[0], np.searchsorted(entries, np.arange(CSR_SUM_ENTRIES, entries[-1], CSR_SUM_ENTRIES)),
         [n_rows]]))
    dense = out.numpy()
    ones = np.ones(len(cols_np), dtype=dense.dtype)

    def rows_product(lo: int, hi: int) -> None:
        inputs = scipy.sparse.csr_array(
            (ones[starts[lo]:starts[hi]], cols_np[starts[lo]:starts[hi]],
             starts[lo:hi + 1] - starts[lo]), shape=(hi - lo, weights.shape[0]))
        (inputs @ weights).toarray(out=dense[lo:hi])  # rows lo..hi-1, zero before

    chunks = list(itertools.pairwise(bounds.tolist()))
    workers = min(torch.get_num_threads(), len(chunks))
    if workers <= 1:
        for lo, hi in chunks:
            rows_product(lo, hi)
        return
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda chunk: rows_product(*chunk), chunks))


@dataclass
class TrainView:
    """What a model trains on.

    Args:
        kind: ``pairs`` (user, positive, sampled negatives), ``ratings`` (user, item, explicit
            rating of each training interaction; on data without ratings each interaction is
            rated 1 and ``n_negatives`` sampled unobserved items per interaction are rated 0),
            ``user_rows`` (each user's row of the interaction matrix), ``sequences`` (each user's chronological items, every position a
            target) or ``matrix`` (all training interactions in one batch, for closed forms).
        batch_size: training batch size (ignored by ``matrix``).
        n_negatives: negatives per positive for ``pairs`` (and ``ratings`` without ratings).
        max_len: window length for ``sequences``.
        sparse_rows: ``user_rows`` as a sparse COO 0/1 matrix (coalesced; one entry per item
            of the user, repeats counted once) instead of a dense one, for a model whose first
            layer and loss read only the inputs (Mult-VAE/DAE).
        steps_per_load: training batches the loader serves at once, as one batch of
            ``steps_per_load`` times ``batch_size`` rows that the model takes in consecutive
            slices of ``batch_size``, an optimizer step each (BPR): Lightning's work per loaded
            batch and the collation's per-call costs are paid once for all of them.
    """

    kind: TrainViewKind = "pairs"
    batch_size: int = 1024
    n_negatives: int = 1
    max_len: int = 50
    sparse_rows: bool = False
    steps_per_load: int = 1

    def __post_init__(self) -> None:
        if self.steps_per_load < 1:
            raise ValueError(f"steps_per_load must be at least 1, got {self.steps_per_load}")


@dataclass
class DatasetInfo:
    """Dataset facts that models and metrics may use, all derived from training data.

    Args:
        item_popularity: (n_items,) training interaction counts.
        tail_mask: (n_items,) True for tail items (every item outside the head).
        head_share: the share of items that forms the head (``eval.head_share``).
        item_text: one string per item, or None.
        item_category: (n_items,) category index per item, or None.
        cold_items: (n_items,) True for items held out of training and validation
            (``eval.cold_items``, cold-start evaluation), or None when none are.
        item_bucket: (n_items,) popularity bucket per item (`recozoo.data.popularity.BUCKETS`);
            computed from the popularity and ``head_share`` when not given.
        user_activity: (n_users,) training interactions per user, or None when unknown.
        heavy_user_share: the share of users that are heavy (``eval.heavy_user_share``).
        heavy_users: (n_users,) True for heavy users (`heavy_user_mask`); computed from
            ``user_activity`` and ``heavy_user_share`` when not given; None without activity
            (the light/heavy user metrics then have no value).
        train_pairs: (2, n_train) the (user, item) rows of the training interactions, for
            models built on the interaction graph (LightGCN, SVD++); None where unknown (a
            model rebuilt from a run folder reads them from its checkpoint).
        rating_mean: mean explicit training rating, or None for data without ratings.
        rating_range: (lowest, highest) explicit training rating, or None.
        event_counts: (len(EVENT_NAMES),) training interactions per event type (view, cart,
            purchase), or None for data without event types (every event a view).

    ``DatasetInfo.from_popularity`` derives the tail mask and the buckets from the training
    counts: the one place where a dataset's head and tail are decided.
    """

    name: str
    n_users: int
    n_items: int
    item_popularity: torch.Tensor
    tail_mask: torch.Tensor
    head_share: float
    item_text: list[str] | None = None
    item_category: torch.Tensor | None = None
    cold_items: torch.Tensor | None = None
    item_bucket: torch.Tensor | None = None
    train_pairs: torch.Tensor | None = None
    rating_mean: float | None = None
    rating_range: tuple[float, float] | None = None
    event_counts: torch.Tensor | None = None
    user_activity: torch.Tensor | None = None
    heavy_user_share: float = DEFAULT_HEAVY_USER_SHARE
    heavy_users: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.item_bucket is None:
            self.item_bucket = torch.as_tensor(popularity_buckets(
                self.item_popularity.cpu().numpy(), self.head_share))
        if self.heavy_users is None and self.user_activity is not None:
            if len(self.user_activity) != self.n_users:
                raise ValueError(f"user_activity has {len(self.user_activity)} values, expected "
                                 f"one per user ({self.n_users})")
            self.heavy_users = heavy_user_mask(self.user_activity.cpu().numpy(),
                                               self.heavy_user_share)

    @classmethod
    def from_popularity(cls, name: str, n_users: int, item_popularity: np.ndarray | torch.Tensor,
                        head_share: float, **facts: Any) -> DatasetInfo:
        """Facts from training counts: the tail mask and the popularity buckets follow from
        ``item_popularity`` and ``head_share`` (`recozoo.data.popularity`)."""
        # a copy: arrays pandas hands out are read-only (copy-on-write), which torch warns of
        popularity = np.array(item_popularity, dtype=np.float64)
        bucket = torch.as_tensor(popularity_buckets(popularity, head_share))
        return cls(name=name, n_users=n_users, n_items=len(popularity),
                   item_popularity=torch.as_tensor(popularity, dtype=torch.float32),
                   tail_mask=bucket > 0, head_share=head_share, item_bucket=bucket, **facts)

    @property
    def pad_item(self) -> int:
        """The padding index used in item sequences (one past the last item)."""
        return self.n_items


#: score-matrix entries of one automatic evaluation batch: 256 MB of float32 scores (the targets,
#: the mask and top-K take a few times that while the batch is evaluated). Each batch pays fixed
#: costs (its metric updates, list writes and loop hooks: thousands of small operations) that
#: weigh on a thin one: at 10^7 interactions (302k items) 2^24 entries are 55 users a batch. The
#: 10^6 shop's bpr test stage (46,600 items; 2 alternating runs each, 2026-12-06) at 2^24 / 2^25
#: / 2^26 / 2^27 entries: 13.0-15.3 / 10.3-12.7 / 10.2-12.3 / 9.3-11.3 s, peak RSS 1.03 / 1.11 /
#: 1.27 / 1.61 GB. Keep each (users, items) block well above glibc's 32 MiB mmap ceiling: blocks
#: just under it come from the heap, and a 1e6-interaction evaluation grew by 45 MB a batch to
#: 16 GB (batches of 180 x 46,600)
EVAL_SCORES_PER_BATCH = 2**26


@dataclass
class EvalBatch:
    """One evaluation batch; identical for every model.

    ``history`` holds each user's most recent input items, left-padded with ``pad_item``
    (the newest item is in the last column). ``seen_*`` lists every input item as
    (row in batch, item) pairs: these are masked before ranking. ``target_*`` lists the held-out
    items the same way.
    """

    user: torch.Tensor  # (B,)
    history: torch.Tensor  # (B, L)
    seen_rows: torch.Tensor  # (nnz_seen,)
    seen_cols: torch.Tensor  # (nnz_seen,)
    target_rows: torch.Tensor  # (nnz_target,)
    target_cols: torch.Tensor  # (nnz_target,)
    target_rating: torch.Tensor | None = None  # (nnz_target,)
    #: (B, 2) distinct input items in the head and in the tail (`inputs_per_group` of the seen
    #: pairs); None: the evaluator counts them from the seen pairs
    input_counts: torch.Tensor | None = None
    #: the seen pairs are distinct and sorted by row, then item (the DataModule's batches), so
    #: `seen_sparse` and `seen_sum` skip their sort; False: any order, repeats allowed
    seen_distinct_sorted: bool = False
    #: (B, n_items) float32 memory that `dot_scores`, `same_scores` and `seen_sum` (of sparse
    #: weights) may write the scores into, set by whoever consumes them
    #: (`recozoo.evaluation.Ranker`) and reused batch after batch; None: fresh
    scores_out: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.user)

    def dot_scores(self, vectors: torch.Tensor, table: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n) ``vectors @ table.T + bias`` of (B, d) user vectors, an (n, d) item table and
        an optional per-item bias (n,) (e.g. a linear layer's over the items): a factor model's
        scores, written into ``scores_out`` where it is set, has that shape and dtype and no
        gradient is needed; the bias is added in place after the product. A product at the
        scale of a catalogue is bound by writing its output, and fresh memory costs the kernel a
        page fault per 4 KB: 512 x 302,000 x 64 took 139 ms into reused memory against 271 ms
        into fresh (2 threads)."""
        out = self._offered_memory(table.shape[0], vectors, table)
        scores = vectors @ table.T if out is None else torch.mm(vectors, table.T, out=out)
        return scores if bias is None else scores.add_(bias)

    def same_scores(self, row: torch.Tensor) -> torch.Tensor:
        """(B, n) scores that are one (n,) row for every user (a non-personalised model's),
        copied into ``scores_out`` where it can take them; else the row expanded, a view the
        consumer copies before masking it. On the 10^6 shop pop's test stage took 3.3-3.4 s
        against 5.2-5.6 s with that copy (2 alternating runs each)."""
        out = self._offered_memory(row.shape[0], row)
        return row.expand(len(self), -1) if out is None else out.copy_(row)

    def _offered_memory(self, n_cols: int, *inputs: torch.Tensor) -> torch.Tensor | None:
        """``scores_out`` where it can hold (B, n_cols) scores computed from ``inputs``: the
        shape, the first input's dtype and device match, and no gradient is needed."""
        out, first = self.scores_out, inputs[0]
        if (out is None or out.shape != (len(self), n_cols) or out.dtype != first.dtype
                or out.device != first.device
                or (torch.is_grad_enabled() and any(t.requires_grad for t in inputs))):
            return None
        return out

    def seen_matrix(self, n_items: int) -> torch.Tensor:
        """(B, n_items) float 0/1 matrix of the inputs."""
        rows = torch.zeros(len(self.user), n_items, device=self.user.device)
        rows[self.seen_rows, self.seen_cols] = 1.0
        return rows

    def seen_sparse(self, n_items: int, layout: torch.layout = torch.sparse_coo) -> torch.Tensor:
        """The same 0/1 matrix as ``seen_matrix``, sparse (one entry per input item): a product
        ``seen_sparse(n) @ W`` costs O(inputs x d), not O(B x n_items x d). Measured for EASE's
        scores (one CPU thread, 5% dense, 943 x 1,682 @ 1,682 x 1,682): 66 ms dense, 18 ms
        sparse; 0.2% dense, 1,024 x 20,000 @ 20,000 x 20,000: 9.0 s against 0.29 s.
        ``layout=torch.sparse_csr`` for ``nn.Linear`` and sparse @ sparse products, where COO
        is several times slower (a 943 x 1,682 input into 600 units, one thread: 77 ms COO,
        8-17 ms CSR, 42 ms dense); COO (the default) for sparse @ dense ``torch.sparse.mm``,
        though for that product `seen_sum` is faster (EASE and ItemKNN score with it)."""
        self._check_seen_items(n_items)
        matrix = zero_one_sparse(self.seen_rows, self.seen_cols, (len(self.user), n_items),
                                 distinct_sorted=self.seen_distinct_sorted)
        return matrix.to_sparse_csr() if layout == torch.sparse_csr else matrix

    def seen_sum(self, weights: torch.Tensor | ColumnBlocks) -> torch.Tensor:
        """(B, d): each user's sum of the rows of ``weights`` (n_items, d) over the user's
        distinct input items, ``seen_sparse(n_items) @ weights`` (EASE's and ItemKNN's scores)
        computed faster: `zero_one_product` for dense weights (in `ColumnBlocks` too: into
        ``scores_out`` where it can take them), `zero_one_csr_product` (likewise) for sparse
        CSR ones."""
        self._check_seen_items(weights.shape[0])
        if isinstance(weights, ColumnBlocks):
            return zero_one_product(self.seen_rows, self.seen_cols, len(self.user), weights,
                                    distinct_sorted=self.seen_distinct_sorted,
                                    out=self._offered_memory(weights.shape[1],
                                                             *weights.blocks))
        if weights.layout == torch.sparse_csr:
            return zero_one_csr_product(self.seen_rows, self.seen_cols, len(self.user), weights,
                                        distinct_sorted=self.seen_distinct_sorted,
                                        out=self._offered_memory(weights.shape[1],
                                                                 weights.values()))
        return zero_one_product(self.seen_rows, self.seen_cols, len(self.user), weights,
                                distinct_sorted=self.seen_distinct_sorted)

    def _check_seen_items(self, n_items: int) -> None:
        """Refuse input items outside a catalogue of ``n_items`` (batches built outside the
        DataModule, e.g. by a service, are not checked before)."""
        rows, cols = self.seen_rows, self.seen_cols
        if len(cols) and (int(cols.min()) < 0 or int(cols.max()) >= n_items):
            raise ValueError(f"an input item index is outside the catalogue's 0..{n_items - 1}")
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(self.user)):
            raise ValueError(f"an input's row is outside the batch's 0..{len(self.user) - 1}")
