"""`TrainingGraph`: the training (user, item) pairs a graph model propagates over, kept in the
model's checkpoint so that a model rebuilt from a run folder (serving, batch export) scores
exactly as it did after training, without the training data."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recozoo.data.contracts import DatasetInfo
from recozoo.models.components.interaction_matrix import interaction_matrix


class TrainingGraph(nn.Module):
    """The bipartite user-item graph of the training interactions.

    Args:
        info: dataset facts; ``info.train_pairs`` (2, n_train) gives the edges. None (a model
            rebuilt from a run folder) starts empty: loading the checkpoint fills the edges.

    The edges are persistent buffers of any length: ``load_state_dict`` resizes them to the
    saved ones. They are data, not fitted numbers: `saved_numbers` lets a model leave them out of
    its ``n_params``.
    """

    def __init__(self, info: DatasetInfo):
        super().__init__()
        self.n_users, self.n_items = info.n_users, info.n_items
        pairs = info.train_pairs
        if pairs is None:
            pairs = torch.zeros(2, 0, dtype=torch.long)
        elif pairs.ndim != 2 or pairs.shape[0] != 2:
            raise ValueError(f"DatasetInfo.train_pairs must be (2, n_train) user and item rows, "
                             f"got shape {tuple(pairs.shape)}")
        self.register_buffer("user", pairs[0].long().clone())
        self.register_buffer("item", pairs[1].long().clone())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # the edge count is the saved run's, not known when the model is rebuilt
        for name in ("user", "item"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def saved_numbers(self) -> int:
        """How many numbers the edges add to a checkpoint."""
        return self.user.numel() + self.item.numel()

    def _require_edges(self) -> None:
        if self.user.numel() == 0:
            raise ValueError("the training graph is empty: build the model with "
                             "DatasetInfo.train_pairs (RecDataModule sets them) or load a "
                             "checkpoint that holds them")

    def user_item(self) -> torch.Tensor:
        """(n_users, n_items) sparse 0/1 matrix of the training pairs (duplicates once)."""
        self._require_edges()
        return interaction_matrix(self.user, self.item, self.n_users, self.n_items)

    def user_neighbourhood(self) -> torch.Tensor:
        """(n_users, n_items) sparse CSR matrix with ``|N(u)|^-1/2`` at each training pair of
        user u: its product with item vectors is SVD++'s implicit term
        ``|N(u)|^-1/2 sum_{j in N(u)} y_j``."""
        matrix = self.user_item()
        user = matrix.indices()[0]
        degree = torch.bincount(user, minlength=self.n_users).float()  # (n_users,)
        values = degree[user].rsqrt()
        return torch.sparse_coo_tensor(matrix.indices(), values, matrix.shape,
                                       check_invariants=False).to_sparse_csr()

    def normalized_adjacency(self) -> torch.Tensor:
        """(n_users + n_items) square sparse CSR ``D^-1/2 A D^-1/2`` of the bipartite graph
        (users first, then items), LightGCN's propagation matrix (He et al., 2020, eq. 7)."""
        matrix = self.user_item()
        user, item = matrix.indices()
        n = self.n_users + self.n_items
        rows = torch.cat([user, item + self.n_users])
        cols = torch.cat([item + self.n_users, user])
        degree = torch.bincount(rows, minlength=n).float().clamp(min=1)  # (n,)
        values = degree[rows].rsqrt() * degree[cols].rsqrt()
        adjacency = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n),
                                            check_invariants=False)
        return adjacency.coalesce().to_sparse_csr()
