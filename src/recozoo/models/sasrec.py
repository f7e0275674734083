"""SASRec: self-attentive sequential recommendation, trained with full cross-entropy.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. Causal self-attention
over the user's last ``max_len`` items (`CausalTransformerEncoder`); the state after each item
scores the next one by a dot product with the shared item embeddings, and the state after the
newest item scores the catalogue at evaluation.

What deliberately differs from the paper: the loss is softmax cross-entropy over all items at
every position instead of binary cross-entropy with one sampled negative. Petrov & Macdonald
("gSASRec", RecSys 2023) and Klenitskiy & Vasilev ("Turning Dross Into Gold Loss: is BERT4Rec
really better than SASRec?", RecSys 2023) show that this makes SASRec the strong sequential
baseline it is known as today. GELU replaces ReLU in the feed-forward layers (as in BERT4Rec and
RecBole); the blocks are pre-norm with a final layer norm, as in the authors' code.
"""

from __future__ import annotations

import torch

from recozoo.data.datamodule import DatasetInfo
from recozoo.models.components.sequence import CausalTransformerEncoder
from recozoo.models.sequential import SequentialRecommender


class SASRec(SequentialRecommender):
    """Transformer next-item model with tied item embeddings.

    Args:
        hidden_size: embedding and hidden size.
        num_layers / num_heads: self-attention blocks and heads.
        dropout: dropout on embeddings, attention and feed-forward outputs.
        max_len, batch_size, sampled_softmax, n_sampled, negative_sampling: see
            `SequentialRecommender`.
    """

    scores_new_users = True  # scores read only the user's items, never a user id

    def __init__(self, info: DatasetInfo, hidden_size: int = 64, num_layers: int = 2,
                 num_heads: int = 1, dropout: float = 0.2, max_len: int = 50,
                 batch_size: int = 128, **kwargs):
        super().__init__(info, max_len=max_len, batch_size=batch_size, **kwargs)
        self.encoder = CausalTransformerEncoder(info.n_items, hidden_size, num_layers, num_heads,
                                                max_len, dropout)

    #: padded keys are blocked and positions count from the newest item
    leading_padding_inert = True

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.encoder(seq)  # (B, L, hidden)

    def encode_last(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.encoder.last_state(seq)  # (B, hidden)

    def output_layer(self, items: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, None]:
        table = self.encoder.embedding
        return (table.items if items is None else table(items)), None  # tied embeddings
