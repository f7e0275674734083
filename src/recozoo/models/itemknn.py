"""ItemKNN: item-based collaborative filtering with cosine similarity.

Sarwar et al., "Item-based collaborative filtering recommendation algorithms", WWW 2001; with the
shrinkage term of Koren (KDD 2008) and a fixed neighbourhood as in RecBole's ItemKNN.
``sim(i, j) = <x_i, x_j> / (|x_i| |x_j| + shrink)`` over the binary user columns; each item keeps
its ``k`` most similar items; a user's score for item j is the sum of the similarities between j
and the user's items. The similarity is computed in blocks of items so that memory stays at
O(n_items * block) rather than O(n_items^2). With ``shrink_grid`` / ``k_grid`` both are chosen on
validation after the fit (`ItemKNN.choose_on_validation`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse
import torch

from recozoo.data.contracts import ColumnBlocks, column_blocks
from recozoo.data.datamodule import DatasetInfo, EvalBatch
from recozoo.models.base import ClosedFormRecommender
from recozoo.models.components.grid_climb import climb
from recozoo.models.components.interaction_matrix import (
    dense_enough,
    item_cooccurrence,
    item_cooccurrence_columns,
    item_cooccurrence_rows,
)
from recozoo.top_k import csr_top_k, top_k

log = logging.getLogger(__name__)

# Above this many items the similarity is kept sparse for scoring (a dense copy takes
# n_items^2 floats: 400 MB at 10,000). Measured on one CPU thread, 1,024 users, k = 200, scores
# of a sparse input matrix: ml-100k's shape (1,682 items, 85 inputs a user) 55 ms against the
# former sparse-similarity @ dense-inputs 155 ms; 5,000 items 86 ms dense against 409 ms sparse
# @ sparse; 10,000 items 118 against 294 ms; 20,000 items 213 ms both (the former 3.9 s).
DENSE_SCORING_MAX_ITEMS = 10_000

# The fit keeps the co-occurrence sparse (`ItemKNN._fit_sparse`) where the dense blocks' work
# (training pairs x items) is at least this many times the sparse product's (the sum over users
# of their items squared). Fits on 2 threads, sparse against dense blocks (s), with that ratio:
# Online Retail II 0.98 / 0.22 (19), the embedded shop 0.075 / 0.055 (73), Amazon Scientific
# 0.055 / 0.175 (617), the 10^6 shop 1.3 / 34 (2,231); ml-100k (8) counts with BLAS.
SPARSE_FIT_MIN_RATIO = 128


class ItemKNN(ClosedFormRecommender):
    """Item-item cosine neighbourhood model (fits in one step).

    Args:
        k: neighbours kept per item (where the choice on validation starts).
        shrink: added to the cosine denominator; damps similarities built on few users.
        shrink_grid: shrinkages to choose from on validation after the fit (null: ``shrink``
            stays): refitting outward from ``shrink`` while validation rises (`climb`).
        k_grid: neighbourhood sizes to choose from after the shrinkage, the same way; each item
            keeps its ``max(k_grid)`` most similar items and scores with the best ``k`` of them,
            so trying a size needs no refit (null: ``k`` stays).
        block_size: items per block when computing similarities.
    """

    scores_new_users = True

    def __init__(self, info: DatasetInfo, k: int = 200, shrink: float = 10.0,
                 shrink_grid: Sequence[float] | None = None,
                 k_grid: Sequence[int] | None = None, block_size: int = 1024, **kwargs):
        super().__init__(info, **kwargs)
        if k < 1 or (k_grid is not None and (len(k_grid) == 0 or min(k_grid) < 1)):
            raise ValueError(f"itemknn k and k_grid must be >= 1, got k={k}, k_grid={k_grid}")
        if shrink < 0 or (shrink_grid is not None
                          and (len(shrink_grid) == 0 or min(shrink_grid) < 0)):
            raise ValueError(f"itemknn shrink and shrink_grid must be >= 0, got shrink={shrink}, "
                             f"shrink_grid={shrink_grid}")
        most = max(info.n_items - 1, 1)  # an item's neighbours: every other item at most
        self.k = min(k, most)
        self.shrink = float(shrink)
        self.k_grid = (sorted({min(int(x), most) for x in k_grid} | {self.k})
                       if k_grid is not None else None)
        self.shrink_grid = (sorted({float(x) for x in shrink_grid} | {self.shrink})
                            if shrink_grid is not None else None)
        self.block_size = block_size
        kept = max(self.k_grid) if self.k_grid else self.k
        # column j holds the neighbours of item j, most similar first:
        # W[neighbor_index[:, j], j] = neighbor_weight; the first `neighbours` rows score
        self.register_buffer("neighbor_index", torch.zeros(kept, info.n_items, dtype=torch.long))
        self.register_buffer("neighbor_weight", torch.zeros(kept, info.n_items))
        self.register_buffer("neighbours", torch.tensor(self.k))
        self.register_buffer("fitted_shrink", torch.tensor(self.shrink, dtype=torch.float64))
        self._pairs: tuple[torch.Tensor, torch.Tensor] | None = None  # kept for refits

    def fit(self, batch: dict[str, torch.Tensor]) -> None:
        if self.shrink_grid is not None:  # O(interactions), freed once the choice is made
            self._pairs = (batch["user"], batch["item"])
        self.fit_pairs(batch["user"], batch["item"], self.shrink)

    def fit_pairs(self, user: torch.Tensor, item: torch.Tensor, shrink: float) -> None:
        """Keep each item's most similar items under shrinkage ``shrink``, most similar first."""
        if self._counts_dense(user):
            norms, blocks = self._cooccurrence_blocks(user, item)
            kept = self.neighbor_index.shape[0]
            for start, stop, counts in blocks:  # counts: (stop - start, n_items), rows of X^T X
                # one outer product, shifted in place: 4-5 ms on ml-100k, ~10 as three expressions
                sims = counts.div_(torch.outer(norms[start:stop], norms).add_(shrink + 1e-12))
                own = torch.arange(stop - start, device=sims.device)
                sims[own, own + start] = 0.0  # no self-similarity
                top = top_k(sims, kept)  # sorted: the most similar first
                self.neighbor_index[:, start:stop] = top.indices.T
                self.neighbor_weight[:, start:stop] = top.values.T
        else:
            self._fit_sparse(user, item, shrink)
        self.fitted_shrink.fill_(shrink)

    def _counts_dense(self, user: torch.Tensor) -> bool:
        """Whether the fit counts the co-occurrence into dense blocks (`_cooccurrence_blocks`)
        rather than kept sparse (`_fit_sparse`, on a CPU only): the sparse fit's work is the sum
        over users of their items squared, the dense blocks' the pairs times the items, and the
        sparse fit runs where the second is at least `SPARSE_FIT_MIN_RATIO` times the first."""
        if user.device.type != "cpu" or self._counts_whole(user):
            return True
        products = torch.bincount(user, minlength=self.n_users).double().square().sum()
        return len(user) * self.n_items < SPARSE_FIT_MIN_RATIO * float(products)

    def _counts_whole(self, user: torch.Tensor) -> bool:
        """Whether the co-occurrence is counted whole by BLAS: `dense_enough` data up to
        ``DENSE_SCORING_MAX_ITEMS`` items (`_cooccurrence_blocks`)."""
        return (self.n_items <= DENSE_SCORING_MAX_ITEMS
                and dense_enough(len(user), self.n_users, self.n_items, user.device))

    def _fit_sparse(self, user: torch.Tensor, item: torch.Tensor, shrink: float) -> None:
        """The fit from the co-occurrence's sparse rows (`item_cooccurrence_rows`): similarities
        of the item pairs some user shares, the same values as the dense blocks' (the same
        float32 operations), and each item's top ``kept`` of them (`csr_top_k`); an item with
        fewer neighbours fills its other places with itself at weight 0, which adds nothing to
        a score. Among equal similarities at the last place kept, the lower item index wins
        (the dense blocks' top-k picks one of them unspecified).

        The 10^6 shop (46,600 items, 862k pairs, k 200), 2 threads: the fit 33.5 s with dense
        blocks (co-occurrence by bags 14.5 s, the blocks' top-k 14.5 s), 1.3 s so."""
        kept = self.neighbor_index.shape[0]
        users_of_item, blocks = item_cooccurrence_rows(user, item, self.n_users, self.n_items,
                                                       self.block_size)
        norms = users_of_item.sqrt()
        for start, stop, crow, col, counts in blocks:
            row = torch.repeat_interleave(torch.arange(start, stop), crow.diff())  # (nnz,)
            sims = counts.div_((norms[row] * norms[col]).add_(shrink + 1e-12))
            sims[col == row] = 0.0  # no self-similarity
            values, index = csr_top_k(crow, col, sims, kept)  # (stop - start, kept)
            own = torch.arange(start, stop)[:, None].expand_as(index)
            self.neighbor_index[:, start:stop] = torch.where(index < 0, own, index).T
            self.neighbor_weight[:, start:stop] = values.T

    def _cooccurrence_blocks(self, user: torch.Tensor, item: torch.Tensor,
                             ) -> tuple[torch.Tensor, Iterator[tuple[int, int, torch.Tensor]]]:
        """The items' norms (square roots of their user counts) and the rows of the item
        co-occurrence ``X^T X`` in blocks of ``block_size`` items, as (start, stop, rows) that
        the caller may overwrite. Dense data (`dense_enough`, MovieLens) up to
        ``DENSE_SCORING_MAX_ITEMS`` items is counted whole at once by BLAS (`item_cooccurrence`,
        n_items^2 floats like the dense scoring weights): ml-100k's fit 71 ms against 92 block
        by block (medians of 12 alternating fits). Other data is counted block by block
        (`item_cooccurrence_columns`, memory O((n_users + n_items) x block_size); on a CPU
        `_fit_sparse` counts it instead, kept sparse): on Amazon
        Scientific (8,442 x 4,385, 0.16%) a fit with the whole matrix by bags took 222-583 ms,
        against 290-342 block by block then and 196-216 ms now (torch's profiler: the top-k of
        the blocks took 138 ms of a 280 ms fit before they were counted by bags)."""
        size = self.block_size
        starts = range(0, self.n_items, size)
        if self._counts_whole(user):
            gram = item_cooccurrence(user, item, self.n_users, self.n_items)
            norms = gram.diagonal().sqrt()  # the diagonal: each item's users
            return norms, ((s, min(s + size, self.n_items), gram[s:s + size]) for s in starts)
        users_of_item, blocks = item_cooccurrence_columns(user, item, self.n_users,
                                                          self.n_items, size)
        # (n_items, block) columns are the block's rows: X^T X is symmetric
        return (users_of_item.float().sqrt(),
                ((start, stop, columns.T) for start, stop, columns in blocks))

    def choose_on_validation(self, validate: Callable[[], float]) -> dict[str, Any]:
        """With ``shrink_grid`` and/or ``k_grid``: the shrinkage with the best validation value
        at ``k`` (refitting, `climb` from ``shrink``), then the neighbourhood size with the best
        value at that shrinkage (`climb` from ``k``); each unless another is strictly better.
        A shrinkage choice needs the training pairs of this process's fit: a model loaded from a
        checkpoint keeps the shrinkage it was saved with."""
        if self.shrink_grid is None and self.k_grid is None:
            return {}
        if self.shrink_grid is not None and self._pairs is None:
            log.warning("itemknn: shrink_grid is set, but this model was not fitted in this "
                        "process (loaded from a checkpoint): its shrinkage %g stays",
                        float(self.fitted_shrink))
            return {}
        self.neighbours.fill_(self.k)
        if self.shrink_grid is not None:
            def at_shrink(value: float) -> float:
                if float(self.fitted_shrink) != value:
                    self.fit_pairs(*self._pairs, value)
                return validate()
            shrink, shrink_values = climb(self.shrink_grid, self.shrink, at_shrink)
            if float(self.fitted_shrink) != shrink:
                self.fit_pairs(*self._pairs, shrink)
        else:
            shrink = float(self.fitted_shrink)
            shrink_values = {shrink: float(validate())}
        self._pairs = None
        k, k_values = self.k, {self.k: shrink_values[shrink]}
        if self.k_grid is not None:
            def at_k(value: float) -> float:
                if value == self.k:
                    return shrink_values[shrink]
                self.neighbours.fill_(int(value))
                return validate()
            k, k_values = climb(self.k_grid, self.k, at_k)
            k = int(k)
        self.neighbours.fill_(k)
        log.info("itemknn: shrink %g and k %d chosen on validation (at k %d, shrink %s: %s; "
                 "at shrink %g, k %s: %s)", shrink, k, self.k,
                 "/".join(f"{s:g}" for s in sorted(shrink_values)),
                 "/".join(f"{shrink_values[s]:.4f}" for s in sorted(shrink_values)), shrink,
                 "/".join(f"{n:g}" for n in sorted(k_values)),
                 "/".join(f"{k_values[n]:.4f}" for n in sorted(k_values)))
        return {"shrink": shrink, "k": k,
                "shrink_validation": {f"{s:g}": shrink_values[s] for s in sorted(shrink_values)},
                "k_validation": {f"{int(n)}": k_values[n] for n in sorted(k_values)}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint from before the choice on validation scored with all of its kept
        neighbours (``k`` of them) at ``shrink``; where this model keeps more neighbours
        (``k_grid``), the rows it lacks are neighbours of weight 0."""
        state = checkpoint.get("state_dict")
        if state is None or "neighbor_index" not in state:
            return
        saved = state["neighbor_index"].shape[0]
        state.setdefault("neighbours", torch.tensor(saved))
        state.setdefault("fitted_shrink", torch.tensor(self.shrink, dtype=torch.float64))
        missing = self.neighbor_index.shape[0] - saved
        if missing > 0:
            state["neighbor_index"] = torch.cat(
                [state["neighbor_index"], state["neighbor_index"].new_zeros(missing, self.n_items)])
            state["neighbor_weight"] = torch.cat(
                [state["neighbor_weight"], state["neighbor_weight"].new_zeros(missing, self.n_items)])

    def similarity(self) -> torch.Tensor:
        """(n_items, n_items) sparse similarity with the scoring neighbours (``neighbours`` of
        the kept ones)."""
        n = int(self.neighbours)
        cols = torch.arange(self.n_items, device=self.neighbor_index.device).expand(n, -1)
        index = torch.stack([self.neighbor_index[:n].reshape(-1), cols.reshape(-1)])
        return torch.sparse_coo_tensor(index, self.neighbor_weight[:n].reshape(-1),
                                       (self.n_items, self.n_items),
                                       check_invariants=False).coalesce()

    def dense_similarity(self) -> torch.Tensor:
        """`similarity` as a dense (n_items, n_items) matrix, written in place by one scatter of
        the neighbour columns (summing repeats, as the sparse matrix's coalesce does): ml-100k
        (1,682 items, k = 200), 5-8 ms against 55-80 ms through that coalesce and ``to_dense``
        (2 threads). Scoring rebuilds it after a refit or a checkpoint load (the test stage
        loads the best weights)."""
        n = int(self.neighbours)
        weights = self.neighbor_weight.new_zeros(self.n_items, self.n_items)
        return weights.scatter_add_(0, self.neighbor_index[:n], self.neighbor_weight[:n])

    def _scoring_weights(self) -> ColumnBlocks | torch.Tensor:
        """The similarity in the form ``score`` multiplies by, built once per state of the
        neighbour buffers (`derived`) rather than once per evaluation batch: dense up to
        ``DENSE_SCORING_MAX_ITEMS`` items (each user's sum of its rows, `EvalBatch.seen_sum`, is
        the fastest product there; in `column_blocks` where they fit a core's cache), sparse CSR
        above, where a dense copy would not fit in memory."""
        def build() -> ColumnBlocks | torch.Tensor:
            if self.n_items <= DENSE_SCORING_MAX_ITEMS:
                return column_blocks(self.dense_similarity())
            return self.csr_similarity()

        return self.derived("scoring_weights",
                            (self.neighbor_index, self.neighbor_weight, self.neighbours), build)

    def csr_similarity(self) -> torch.Tensor:
        """`similarity` as a sparse CSR matrix without its zero weights (the places of an item
        with fewer neighbours than kept, which add nothing to a score). On a CPU the neighbour
        columns are read as the compressed columns they are and SciPy converts them to rows
        (O(entries), no sort), where torch's ``coalesce`` sorts them: at 10^7 (302,006 items,
        k 200, 60 M entries) that took 8.6 s each time the test or a validation loaded the
        weights."""
        if self.neighbor_index.device.type != "cpu":
            return self.similarity().to_sparse_csr()
        n, n_items = int(self.neighbours), self.n_items
        weight, index = self.neighbor_weight[:n].T, self.neighbor_index[:n].T  # (n_items, n)
        kept = weight != 0
        column_starts = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(kept.sum(1).numpy(), out=column_starts[1:])
        by_column = scipy.sparse.csc_array(
            (weight[kept].numpy(), index[kept].numpy(), column_starts), shape=(n_items, n_items))
        rows = by_column.tocsr()
        rows.sum_duplicates()  # an item listed twice sums, as coalesce did (none is)
        return torch.sparse_csr_tensor(
            torch.from_numpy(rows.indptr.astype(np.int64)),
            torch.from_numpy(rows.indices.astype(np.int64)), torch.from_numpy(rows.data),
            (n_items, n_items))

    def score(self, batch: EvalBatch) -> torch.Tensor:
        # each user's sum of the similarity rows of its items, dense or sparse CSR weights
        return batch.seen_sum(self._scoring_weights())  # (B, n_items)
