"""GRU4Rec: session-based recommendation with recurrent neural networks.

Hidasi, Karatzoglou, Baltrunas & Tikk, "Session-based Recommendations with Recurrent Neural
Networks", ICLR 2016; Hidasi & Karatzoglou, "Recurrent Neural Networks with Top-k Gains for
Session-based Recommendations", CIKM 2018; Hidasi & Czapp, "The Effect of Third Party
Implementations on Reproducibility", RecSys 2023.

What is implemented, following the authors' reference code rather than a framework's copy:

* a GRU over the item sequence whose hidden state after each item scores the next item
  (``scores = h_t W_y^T + b_y``), and the final hidden state scores the catalogue at evaluation;
* **constrained embedding** (the reference's best setting): the input embedding of an item *is*
  its output weight vector ``W_y``, so the embedding is tied to the output layer, plus an item
  output bias ``b_y`` (the bias is one of the pieces third-party versions drop);
* **cross-entropy over all items** (the later papers' loss; with sampled negatives it is the same
  softmax restricted to the sample), through ``Recommender.cross_entropy_loss``;
* dropout on the input embeddings and on the hidden states (``dropout_p_embed``,
  ``dropout_p_hidden`` in the reference);
* whole-sequence training: a user's window is one row and every position is a target
  (`SequentialRecommender`), with full backpropagation through time. The reference's
  session-parallel mini-batches carry the hidden state across mini-batches and backpropagate one
  step; whole-sequence training sees the same (prefix, next item) pairs.

What deliberately differs: Adam instead of the reference's Adagrad with momentum (both work; Adam
needs no per-dataset momentum tuning), the full softmax up to ``SAMPLED_SOFTMAX_ABOVE`` items and
above it a sampled softmax with popularity negatives shared by the batch and the log-Q correction
(the reference samples negatives by popularity within the mini-batch and adds extra shared
samples), and users' whole histories are sequences (the reference works on sessions).
"""

from __future__ import annotations

import torch
from torch import nn

from recozoo.data.datamodule import DatasetInfo
from recozoo.models.components.lookup import entries
from recozoo.models.components.sequence import GRUEncoder
from recozoo.models.sequential import SequentialRecommender


class GRU4Rec(SequentialRecommender):
    """GRU next-item model with tied input/output item embeddings and full cross-entropy.

    Args:
        hidden_size: GRU size, also the item embedding size (constrained embedding).
        num_layers: stacked GRU layers.
        dropout_embed: dropout on the input embeddings (and between GRU layers).
        dropout_hidden: dropout on the GRU output before scoring.
        max_len, batch_size, sampled_softmax, n_sampled, negative_sampling: see
            `SequentialRecommender`.
    """

    scores_new_users = True  # scores read only the user's items, never a user id

    def __init__(self, info: DatasetInfo, hidden_size: int = 100, num_layers: int = 1,
                 dropout_embed: float = 0.2, dropout_hidden: float = 0.5, max_len: int = 50,
                 batch_size: int = 128, **kwargs):
        super().__init__(info, max_len=max_len, batch_size=batch_size, **kwargs)
        self.encoder = GRUEncoder(info.n_items, hidden_size, num_layers, dropout_embed)
        self.hidden_dropout = nn.Dropout(dropout_hidden)
        self.item_bias = nn.Parameter(torch.zeros(info.n_items))

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.hidden_dropout(self.encoder(seq))  # (B, L, hidden)

    def encode_last(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.hidden_dropout(self.encoder.last_state(seq))  # (B, hidden)

    def output_layer(self, items: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        table = self.encoder.embedding  # constrained embedding: W_y is the input embedding
        if items is None:
            return table.items, self.item_bias
        return table(items), entries(self.item_bias, items)
