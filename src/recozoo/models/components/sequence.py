"""Sequence encoders shared by the sequential models (GRU4Rec, SQN/DQN, ...): plain nn.Modules.

Input sequences are left-padded with ``pad_item`` (= n_items), the newest item in the last
column, as served by `RecDataModule` (training view ``sequences`` and `EvalBatch.history`).
"""

from __future__ import annotations

import torch
from torch import nn


class ItemEmbedding(nn.Embedding):
    """Item embeddings with one extra padding row (index ``n_items``) that stays zero."""

    def __init__(self, n_items: int, dim: int):
        super().__init__(n_items + 1, dim, padding_idx=n_items)
        nn.init.normal_(self.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.weight[n_items].zero_()

    @property
    def items(self) -> torch.Tensor:
        """(n_items, dim) embeddings of the real items (without the padding row)."""
        return self.weight[:-1]


class GRUEncoder(nn.Module):
    """Embeds an item sequence and runs a GRU over it.

    Args:
        n_items: catalogue size (the padding index is ``n_items``).
        dim: embedding and hidden size.
        num_layers: stacked GRU layers.
        dropout: dropout on the embeddings and between layers.

    ``forward(seq)`` returns the hidden state at every position, (B, L, dim); with left padding
    the last column is the state after the user's newest item.
    """

    def __init__(self, n_items: int, dim: int = 64, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.embedding = ItemEmbedding(n_items, dim)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.dropout(self.embedding(seq)))  # (B, L, dim)
        return states

    def last_state(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, dim) the state after the newest item."""
        return self.forward(seq)[:, -1]
