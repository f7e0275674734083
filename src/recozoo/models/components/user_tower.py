"""`CausalUserTower`: a user's recent item vectors -> one vector per position (SASRec style).

Kang and McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018: learned positions,
causal self-attention, the state at the newest position represents the user. Here the inputs
are item vectors from any item tower (text, IDs or both), so the tower also encodes histories
of items never seen in training.
"""

from __future__ import annotations

import torch
from torch import nn

from recozoo.models.components.sequence import first_used_column


class CausalUserTower(nn.Module):
    """Causal Transformer over a left-padded sequence of item vectors.

    Args:
        dim: item vector size (also the output size).
        max_len: positions kept (longer histories keep their newest ``max_len`` items).
        n_layers: Transformer layers.
        n_heads: attention heads.
        dropout: dropout on the inputs and inside the layers.

    ``forward(items, pad)`` takes (B, L, dim) vectors and a (B, L) True-where-padding mask and
    returns the states of the newest positions, (B, L', dim) with L' = min(L, max_len), the
    newest item in the last column (`fit_length` leaves out the columns no row uses first). A
    position attends to itself and to the non-padding positions before it.
    """

    def __init__(self, dim: int, max_len: int = 50, n_layers: int = 2, n_heads: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        self.max_len, self.n_heads = max_len, n_heads
        self.position = nn.Embedding(max_len, dim)
        nn.init.normal_(self.position.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=2 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def fit_length(self, items: torch.Tensor, pad: torch.Tensor,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut (B, L, dim) / (B, L) to their newest ``max_len`` columns, then drop the oldest
        columns that are padding in every row: the positions stay right-aligned (the newest item
        at position ``max_len - 1``), and a padding position changes no other position's state
        (its key is blocked), so the states of the kept positions are those of the full width.
        A batch of short histories then costs its longest one, not ``max_len``: Amazon
        Scientific's users hold ~6 items, of 50 positions."""
        if items.shape[1] > self.max_len:
            items, pad = items[:, -self.max_len:], pad[:, -self.max_len:]
        start = first_used_column(pad)
        return items[:, start:], pad[:, start:]

    def forward(self, items: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(B, L', dim) states of the newest L' = min(L, max_len) positions. A caller that
        passes what `fit_length` returns pays only for the columns some row uses."""
        items, pad = items[:, -self.max_len:], pad[:, -self.max_len:]
        length = items.shape[1]
        position = self.position.weight[self.max_len - length:]  # right-aligned
        hidden = items.masked_fill(pad.unsqueeze(-1), 0.0) + position  # (B, L', d)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        allowed = causal & ~pad[:, None, :]  # (B, L', L'): earlier, non-padding keys
        allowed |= torch.eye(length, dtype=torch.bool, device=items.device)  # never empty
        blocked = (~allowed).repeat_interleave(self.n_heads, dim=0)  # (B * heads, L', L')
        hidden = self.layers(self.dropout(hidden), mask=blocked)
        return self.norm(hidden)  # (B, L', d)
