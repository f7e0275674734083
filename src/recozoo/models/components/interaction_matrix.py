"""The user-item interaction matrix as a torch sparse tensor, shared by closed-form models."""

from __future__ import annotations

import torch


def interaction_matrix(user: torch.Tensor, item: torch.Tensor, n_users: int, n_items: int,
                       ) -> torch.Tensor:
    """(n_users, n_items) sparse COO 0/1 matrix of the (user, item) pairs (duplicates count once)."""
    index = torch.stack([user, item])
    values = torch.ones(index.shape[1], dtype=torch.float32, device=user.device)
    matrix = torch.sparse_coo_tensor(index, values, (n_users, n_items)).coalesce()
    return torch.sparse_coo_tensor(matrix.indices(), torch.ones_like(matrix.values()),
                                   (n_users, n_items)).coalesce()


#: largest users x items for which `item_cooccurrence` builds the dense 0/1 matrix (64 MB of
#: float32): a dense product is ~2x faster than torch's sparse one on small data
DENSE_ENTRIES = 2**24


def item_cooccurrence(user: torch.Tensor, item: torch.Tensor, n_users: int, n_items: int,
                      ) -> torch.Tensor:
    """(n_items, n_items) float32 ``X^T X`` of the 0/1 interaction matrix X: how many users
    interacted with both items (exact: counts stay far below float32's 2^24)."""
    if n_users * n_items <= DENSE_ENTRIES:
        dense = torch.zeros(n_users, n_items, device=user.device)
        dense[user, item] = 1.0  # duplicates count once
        return dense.t() @ dense
    matrix = interaction_matrix(user, item, n_users, n_items)
    return torch.sparse.mm(matrix.t(), matrix.to_dense())
