"""`CausalUserTower`: a user's recent item vectors -> one vector per position (SASRec style).

Kang and McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018: learned positions,
causal self-attention, the state at the newest position represents the user. Here the inputs
are item vectors from any item tower (text, IDs or both), so the tower also encodes histories
of items never seen in training.
"""

from __future__ import annotations

import torch
from torch import nn


class CausalUserTower(nn.Module):
    """Causal Transformer over a left-padded sequence of item vectors.

    Args:
        dim: item vector size (also the output size).
        max_len: positions kept (longer histories keep their newest ``max_len`` items).
        n_layers: Transformer layers.
        n_heads: attention heads.
        dropout: dropout on the inputs and inside the layers.

    ``forward(items, pad)`` takes (B, L, dim) vectors and a (B, L) True-where-padding mask and
    returns (B, max_len, dim) states, the newest item in the last column. A position attends to
    itself and to the non-padding positions before it.
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
        """Left-pad or cut (B, L, dim) / (B, L) to ``max_len`` so positions mean the same
        thing whatever length the caller serves."""
        length = items.shape[1]
        if length >= self.max_len:
            return items[:, -self.max_len:], pad[:, -self.max_len:]
        extra = self.max_len - length
        items = nn.functional.pad(items, (0, 0, extra, 0))
        pad = nn.functional.pad(pad, (extra, 0), value=True)
        return items, pad

    def forward(self, items: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        items, pad = self.fit_length(items, pad)
        length = items.shape[1]
        hidden = items.masked_fill(pad.unsqueeze(-1), 0.0) + self.position.weight  # (B, L, d)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        allowed = causal & ~pad[:, None, :]  # (B, L, L): earlier, non-padding keys
        allowed |= torch.eye(length, dtype=torch.bool, device=items.device)  # never empty
        blocked = (~allowed).repeat_interleave(self.n_heads, dim=0)  # (B * heads, L, L)
        hidden = self.layers(self.dropout(hidden), mask=blocked)
        return self.norm(hidden)  # (B, L, d)
