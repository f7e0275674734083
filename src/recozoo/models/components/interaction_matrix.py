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
