"""The user-item interaction matrix and its item co-occurrence, shared by closed-form models."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse
import torch

from recozoo.data.contracts import distinct_pairs, zero_one_sparse


def interaction_matrix(user: torch.Tensor, item: torch.Tensor, n_users: int, n_items: int,
                       ) -> torch.Tensor:
    """(n_users, n_items) sparse COO 0/1 matrix of the (user, item) pairs (duplicates count once)."""
    return zero_one_sparse(user, item, (n_users, n_items))


#: entries of the dense 0/1 block of users `item_cooccurrence` builds at a time (64 MB of float32)
DENSE_ENTRIES = 2**24

#: result entries `item_cooccurrence`'s bags sum before adding them up (4 MB of float32: a
#: buffer the allocator reuses, where a whole product would be a fresh n_items^2 each block)
BAG_CHUNK_ENTRIES = 2**20

#: products (and so at most entries) of the co-occurrence rows `item_cooccurrence_rows` counts
#: at once. Its block's arrays and ItemKNN's fit of them took ~95 bytes an entry (the 10^6
#: shop's largest block, 4.4 M entries, raised the peak RSS by 415 MB): ~800 MB at this limit
ROW_BLOCK_PRODUCTS = 2**23

#: the density (interactions / (users x items)) from which `item_cooccurrence` on a CPU counts
#: with BLAS's symmetric rank-k update (``ssyrk``: O(users x items^2 / 2) multiply-adds at ~100
#: G/s) rather than with bags (O(interactions x items) additions at ~5 G/s). Measured, 2 threads,
#: popularity-skewed random pairs, bags against ``ssyrk`` (ms): 943 x 1,682 at 5% 31 / 18, at 2%
#: 14 / 16, at 1% 9 / 15; 6,000 x 3,700 at 4.5% 680 / 466, at 1% 243 / 346; 20,000 x 5,000 at 1%
#: 1,268 / 2,138. MovieLens is dense enough (ml-100k 5%, ml-1m 4.5%), retail data is not
#: (Amazon Scientific 0.16%).
DENSE_GRAM_MIN_DENSITY = 0.025


def dense_enough(n_pairs: int, n_users: int, n_items: int, device: torch.device) -> bool:
    """Whether `item_cooccurrence` counts with BLAS: on a CPU, where ``n_pairs`` interactions
    fill at least ``DENSE_GRAM_MIN_DENSITY`` of an n_users x n_items matrix."""
    return (device.type == "cpu" and n_users * n_items > 0
            and n_pairs >= DENSE_GRAM_MIN_DENSITY * n_users * n_items)


def item_cooccurrence(user: torch.Tensor, item: torch.Tensor, n_users: int, n_items: int,
                      upper_only: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """(n_items, n_items) float32 ``X^T X`` of the 0/1 interaction matrix X: how many users
    interacted with both items (exact: counts stay far below float32's 2^24; a repeated pair
    counts once). With ``upper_only`` only the upper triangle is certain to hold them and the
    strict lower one may hold anything, for a reader of one triangle (`ease.spd_inverse`):
    the symmetric update below is then not mirrored. ``out``: a contiguous (n_items, n_items)
    float32 buffer to count into (what it held is lost), such as the weights the counts will
    become, so that no second n_items^2 matrix is needed; it is returned.

    X is built a block of users at a time (at most ``DENSE_ENTRIES`` entries) and the blocks'
    products are summed, so memory stays bounded. Each block's product is one of two exact ways,
    the cheaper for the data's density (``DENSE_GRAM_MIN_DENSITY``):

    - sparse data: row i of ``X_b^T X_b`` is the sum of X_b's rows of the users of item i
      (`_bag_counts`), O(interactions x n_items) additions instead of the dense product's
      O(users x n_items^2). Measured on one CPU thread against dense blocks (random pairs):
      943 x 1,682 with 80k pairs 34 vs 80 ms, 6,040 x 3,706 with 800k 1.04 vs 2.57 s, 20,000 x
      5,000 with 1M 2.0 vs 11.0 s (a sparse x sparse product was slower than dense blocks); the
      bags against the sparse ``X_b^T`` @ dense ``X_b`` they replaced (2 threads, the same
      counts): 17 vs 38 ms, 0.61 vs 1.31 s, 1.42 vs 2.65 s;
    - dense data, on a CPU: SciPy's ``ssyrk`` (OpenBLAS), one triangle of the symmetric product
      (half a matrix product's multiply-adds) accumulated block after block, then mirrored.
      ml-100k's training pairs (943 x 1,682, 80k), 2 threads: 15-21 ms against 28-38 ms.
    """
    if out is not None and (out.shape != (n_items, n_items) or out.dtype != torch.float32
                            or not out.is_contiguous() or out.device != user.device):
        raise ValueError(f"item_cooccurrence: out must be a contiguous ({n_items}, {n_items}) "
                         f"float32 tensor on {user.device}, got {tuple(out.shape)} "
                         f"{out.dtype} on {out.device}")
    rows = max(1, DENSE_ENTRIES // max(n_items, 1))
    if rows >= n_users:  # one block: every pair (sorting 80k pairs takes ~5 ms)
        bounds = [0, len(user)]
    else:  # the pairs sorted by user, and where each block's start
        order = torch.argsort(user)
        user, item = user[order], item[order]
        starts = torch.arange(0, n_users + rows, rows, device=user.device)
        bounds = torch.searchsorted(user, starts).tolist()
    if dense_enough(len(user), n_users, n_items, user.device):
        gram = _symmetric_rank_k_counts(user, item, n_users, n_items, rows, bounds, out)
        return gram if upper_only else mirror_upper_triangle(gram)
    return _bag_counts(user, item, n_users, n_items, rows, bounds, out)


def item_cooccurrence_columns(user: torch.Tensor, item: torch.Tensor, n_users: int,
                              n_items: int, block: int,
                              ) -> tuple[torch.Tensor, Iterator[tuple[int, int, torch.Tensor]]]:
    """`item_cooccurrence` a block of columns at a time, for a catalogue whose n_items^2 matrix
    is not to be held: each item's number of distinct users (the diagonal, (n_items,)), and
    (start, stop, columns) for blocks of ``block`` items, ``columns`` the (n_items, stop -
    start) counts, which the caller may overwrite. Memory O((n_users + n_items) x block).

    Column j of a block sums, over the users of each item (one bag per item), their 0/1 row of
    the block's items. 2 threads, against the sparse (items x users) CSR @ dense block columns
    it replaced, the same counts: Amazon Scientific (8,442 x 4,385, 5 blocks of 1,024) 42-54 ms
    against 79-134; random 20,000 x 15,000 with 300k pairs 1.01 s against 1.56."""
    bag_item, bag_user = distinct_pairs(item, user, n_users)  # sorted by item
    starts = torch.searchsorted(bag_item, torch.arange(n_items + 1, device=user.device))
    edges = starts.tolist()
    users_of_item = starts.diff()

    def columns() -> Iterator[tuple[int, int, torch.Tensor]]:
        dense = None  # the block's 0/1 columns of every user, reused
        for start in range(0, n_items, block):
            stop = min(start + block, n_items)
            if dense is None or dense.shape[1] != stop - start:
                dense = torch.zeros(n_users, stop - start, device=user.device)
            lo, hi = edges[start], edges[stop]  # the block's items' pairs
            dense[bag_user[lo:hi], bag_item[lo:hi] - start] = 1.0
            counts = torch.nn.functional.embedding_bag(bag_user, dense, starts[:-1], mode="sum")
            dense[bag_user[lo:hi], bag_item[lo:hi] - start] = 0.0
            yield start, stop, counts

    return users_of_item, columns()


def item_cooccurrence_rows(user: torch.Tensor, item: torch.Tensor, n_users: int, n_items: int,
                           block: int,
                           ) -> tuple[torch.Tensor, Iterator[tuple[int, int, torch.Tensor,
                                                                 torch.Tensor, torch.Tensor]]]:
    """`item_cooccurrence_columns` kept sparse, on a CPU: each item's number of distinct users
    (n_items,), and (start, stop, crow, col, counts) for blocks of at most ``block`` items, the
    rows start..stop-1 of ``X^T X`` as CSR arrays (crow (stop - start + 1,), col and counts
    (nnz,), columns ascending within a row), only the pairs of items some user shares. A block
    also ends before its products (an item's row: the sum of its users' numbers of items) pass
    `ROW_BLOCK_PRODUCTS`, which bounds its entries and so its memory, whatever the data (a
    popular item shares users with most of the catalogue); an item whose row alone passes it
    is a block by itself.

    SciPy's sparse product of the items' user lists with the users' item lists: the work is
    the sum over users of their items squared, not items x interactions, and nothing of the
    catalogue's square is made dense. The 10^6 shop (57,147 users, 46,600 items, 862k pairs;
    18 M products in all): one block of 1,024 items 0.31-0.58 s by bags (dense columns, 2
    threads) against ~0.01 s so."""
    rows, cols = distinct_pairs(user, item, n_items)  # sorted by user, then item
    starts = torch.searchsorted(rows, torch.arange(n_users + 1, device=rows.device))
    ones = np.ones(len(cols), dtype=np.float32)
    by_user = scipy.sparse.csr_array((ones, cols.numpy(), starts.numpy()),
                                     shape=(n_users, n_items))
    by_item = by_user.T.tocsr()  # (n_items, n_users): each item's users
    users_of_item = torch.from_numpy(np.diff(by_item.indptr)).float()
    # (n_items + 1,) products of the rows before each item
    products = np.concatenate([[0.0], np.cumsum(by_item @ np.diff(by_user.indptr).astype(float))])

    def blocks() -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        start = 0
        while start < n_items:
            within = int(np.searchsorted(products, products[start] + ROW_BLOCK_PRODUCTS,
                                         side="right")) - 1  # rows start..within-1 fit
            stop = min(start + block, n_items, max(within, start + 1))
            counts = by_item[start:stop] @ by_user  # (stop - start, n_items) sparse
            counts.sort_indices()
            yield (start, stop, torch.from_numpy(counts.indptr.astype(np.int64)),
                   torch.from_numpy(counts.indices.astype(np.int64)),
                   torch.from_numpy(counts.data))
            start = stop

    return users_of_item, blocks()


def _bag_counts(user: torch.Tensor, item: torch.Tensor, n_users: int, n_items: int, rows: int,
                bounds: list[int], out: torch.Tensor | None) -> torch.Tensor:
    """`item_cooccurrence` of (user, item) pairs grouped by blocks of ``rows`` users
    (``bounds``: where each block's pairs start), by bags: row i of ``X_b^T X_b`` is the sum of
    X_b's rows of the users of item i. One zeroed result and one block buffer (its ones cleared
    after each block), and the bags' sums added ``BAG_CHUNK_ENTRIES`` at a time, rather than a
    fresh buffer and a whole product per block; zeroing the result and the block buffer is
    still 34 ms of a ~140 ms count on Amazon Scientific (torch's profiler).
    2 threads, medians of 4-8 alternating runs, the same counts: Amazon Scientific (8,442 x
    4,385, 59k pairs, 3 blocks) 133 against 167 ms (one run of the former 788); random
    popularity-skewed pairs, 20,000 x 5,000 at 0.3% 444 against 748 ms, 50,000 x 2,000 at 0.5%
    297 against 420, 3,000 x 12,000 at 0.2% 636 against 2,392."""
    device = user.device
    gram = out.zero_() if out is not None else torch.zeros(n_items, n_items, device=device)
    dense = torch.zeros(min(rows, n_users), n_items, device=device)  # X_b, reused
    chunk = max(1, BAG_CHUNK_ENTRIES // max(n_items, 1))  # items whose rows are summed at once
    every_item = torch.arange(n_items + 1, device=device)
    for block, start in enumerate(range(0, n_users, rows)):
        lo, hi = bounds[block], bounds[block + 1]
        local, items = user[lo:hi] - start, item[lo:hi]
        dense[local, items] = 1.0  # duplicates count once
        bag_item, bag_user = distinct_pairs(items, local, len(dense))  # sorted by item
        starts = torch.searchsorted(bag_item, every_item)  # (n_items + 1,) where each bag starts
        edges = starts.tolist()
        for first in range(0, n_items, chunk):
            last = min(first + chunk, n_items)
            if edges[first] == edges[last]:
                continue  # none of these items has a user in the block
            gram[first:last].add_(torch.nn.functional.embedding_bag(
                bag_user[edges[first]:edges[last]], dense, starts[first:last] - edges[first],
                mode="sum"))
        if start + rows < n_users:  # another block follows: clear this one's ones
            dense[local, items] = 0.0
    return gram


def _symmetric_rank_k_counts(user: torch.Tensor, item: torch.Tensor, n_users: int, n_items: int,
                             rows: int, bounds: list[int], out: torch.Tensor | None,
                             ) -> torch.Tensor:
    """`item_cooccurrence` of (user, item) pairs grouped by blocks of ``rows`` users (``bounds``:
    where each block's pairs start), as BLAS ``ssyrk`` updates: the upper triangle only."""
    from scipy.linalg import blas

    result = out if out is not None else torch.empty(n_items, n_items)
    # the result's row order transposed is a Fortran-order matrix (no copy), whose lower
    # triangle is the result's upper one: the updates accumulate there
    gram = result.numpy().T
    dense = torch.zeros(min(rows, n_users), n_items)  # X_b, reused
    for block, start in enumerate(range(0, n_users, rows)):
        lo, hi = bounds[block], bounds[block + 1]
        local, items = user[lo:hi] - start, item[lo:hi]
        dense[local, items] = 1.0  # duplicates count once
        # X_b^T (n_items, block), Fortran order: no copy (a short last block: its first rows)
        transposed = dense[:min(rows, n_users - start)].numpy().T
        # beta 0 on the first block: what the buffer held is not read
        gram = blas.ssyrk(1.0, transposed, beta=1.0 if block else 0.0, c=gram, lower=1,
                          overwrite_c=1)
        if start + rows < n_users:  # another block follows: clear this one's ones
            dense[local, items] = 0.0
    if not np.may_share_memory(gram, result.numpy()):  # SciPy copied after all
        result.copy_(torch.from_numpy(gram.T))
    return result


def mirror_upper_triangle(matrix: torch.Tensor, block: int = 256) -> torch.Tensor:
    """``matrix`` (n, n) made symmetric in place: its strict lower triangle becomes the mirror of
    its upper one. Tile by tile, so each copy reads a transposed tile that fits in cache: 1,682 x
    1,682, 2 threads, 5-6 ms, where the whole triangle in one piece (``triu()`` plus the
    transpose's ``tril(-1)``, a read that strides across the matrix) took 9-22 ms, ~20 inside
    EASE's fit."""
    n = matrix.shape[0]
    for row in range(0, n, block):
        for col in range(0, row, block):  # tiles below the diagonal, from their mirror tile
            matrix[row:row + block, col:col + block].copy_(
                matrix[col:col + block, row:row + block].T)
        tile = matrix[row:row + block, row:row + block]  # on the diagonal
        tile.copy_(tile.triu() + tile.triu(1).T)
    return matrix
