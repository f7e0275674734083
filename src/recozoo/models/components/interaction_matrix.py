"""The user-item interaction matrix as a torch sparse tensor, shared by closed-form models."""

from __future__ import annotations

import torch

from recozoo.data.contracts import zero_one_product, zero_one_sparse


def interaction_matrix(user: torch.Tensor, item: torch.Tensor, n_users: int, n_items: int,
                       ) -> torch.Tensor:
    """(n_users, n_items) sparse COO 0/1 matrix of the (user, item) pairs (duplicates count once)."""
    return zero_one_sparse(user, item, (n_users, n_items))


#: entries of the dense 0/1 block of users `item_cooccurrence` builds at a time (64 MB of float32)
DENSE_ENTRIES = 2**24


def item_cooccurrence(user: torch.Tensor, item: torch.Tensor, n_users: int, n_items: int,
                      ) -> torch.Tensor:
    """(n_items, n_items) float32 ``X^T X`` of the 0/1 interaction matrix X: how many users
    interacted with both items (exact: counts stay far below float32's 2^24).

    X is built a block of users at a time (at most ``DENSE_ENTRIES`` entries) and the blocks'
    products are summed, so memory stays bounded. Row i of a block's ``X_b^T X_b`` is the sum
    of X_b's rows of the users of item i (`zero_one_product`), O(interactions x n_items)
    additions instead of the dense product's O(users x n_items^2). Measured on one CPU thread
    against dense blocks (random pairs): 943 x 1,682 with 80k pairs 34 vs 80 ms, 6,040 x 3,706
    with 800k 1.04 vs 2.57 s, 20,000 x 5,000 with 1M 2.0 vs 11.0 s (a sparse x sparse product
    was slower than dense blocks); the bags against the sparse ``X_b^T`` @ dense ``X_b`` it
    replaced (2 threads, the same counts): 17 vs 38 ms, 0.61 vs 1.31 s, 1.42 vs 2.65 s.
    """
    rows = max(1, DENSE_ENTRIES // max(n_items, 1))
    order = torch.argsort(user)
    user, item = user[order], item[order]
    starts = torch.arange(0, n_users + rows, rows, device=user.device)
    bounds = torch.searchsorted(user, starts).tolist()
    gram = None
    for block, start in enumerate(range(0, n_users, rows)):
        lo, hi = bounds[block], bounds[block + 1]
        local = user[lo:hi] - start
        dense = torch.zeros(min(rows, n_users - start), n_items, device=user.device)
        dense[local, item[lo:hi]] = 1.0  # duplicates count once
        product = zero_one_product(item[lo:hi], local, n_items, dense)  # X_b^T @ X_b
        # the first block's product is the sum so far (no zeroed matrix to add it to)
        gram = product if gram is None else gram.add_(product)
    return gram if gram is not None else torch.zeros(n_items, n_items, device=user.device)
