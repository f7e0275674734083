"""Caser: convolutional sequence embedding for top-N sequential recommendation.

Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence
Embedding", WSDM 2018. The embeddings of the user's last ``window`` items are an image; horizontal
and vertical convolutions over it, a fully connected layer and the user embedding give a
``2 * dim`` vector ``[z; P_u]``, and ``y = W' [z; P_u] + b'`` scores every item
(`CaserEncoder`).

What deliberately differs from the paper: the paper slides a window over each sequence and
trains on ``T`` next items per window with binary cross-entropy and sampled negatives; here the
window ending at *every* position of a training sequence is encoded in one pass and predicts the
next item with softmax cross-entropy over all items (`SequentialRecommender`). The same
(window, next item) pairs are seen, with a full-catalogue loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recozoo.data.datamodule import DatasetInfo
from recozoo.models.components.sequence import CaserEncoder
from recozoo.models.optimizers import dense_optimizer
from recozoo.models.sequential import SequentialRecommender


class Caser(SequentialRecommender):
    """Horizontal and vertical convolutions over the last ``window`` items, plus the user.

    Args:
        dim: item and user embedding size (``d``).
        window: items per convolution image (``L``).
        n_horizontal / n_vertical: filters per height / vertical filters (``n_h`` / ``n_v``).
        dropout: dropout before the fully connected layer.
        user_lr_scale: the user embeddings' learning rate as a multiple of the optimizer's.
            A user's row is updated only by the batches that hold one of the user's few
            windows (one or two an epoch on ml-100k), while the item and convolution weights
            learn from every batch; at the shared rate the user part, the model's long-term
            preference, stays near its initialisation (see the module notes).
        max_len, batch_size, sampled_softmax, n_sampled, negative_sampling: see
            `SequentialRecommender`.
    """

    def __init__(self, info: DatasetInfo, dim: int = 50, window: int = 5, n_horizontal: int = 16,
                 n_vertical: int = 4, dropout: float = 0.5, user_lr_scale: float = 1.0,
                 max_len: int = 50, batch_size: int = 128, **kwargs):
        super().__init__(info, max_len=max_len, batch_size=batch_size, **kwargs)
        if user_lr_scale <= 0:
            raise ValueError(f"model.user_lr_scale must be > 0, got {user_lr_scale}")
        self.user_lr_scale = float(user_lr_scale)
        self.encoder = CaserEncoder(info.n_items, info.n_users, dim, window, n_horizontal,
                                    n_vertical, dropout)
        self.output = nn.Linear(2 * dim, info.n_items)
        nn.init.normal_(self.output.weight, std=(2 * dim) ** -0.5)
        nn.init.zeros_(self.output.bias)

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.encoder(seq, user)  # (B, L, 2 * dim)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """The optimizer over every weight, the user embeddings in a group of their own at
        ``user_lr_scale`` times its learning rate."""
        users = self.encoder.user_embedding.weight
        rest = [p for p in self.parameters() if p.requires_grad and p is not users]
        optimizer = dense_optimizer(self.optimizer_factory, [{"params": rest},
                                                             {"params": [users]}])
        optimizer.param_groups[1]["lr"] *= self.user_lr_scale
        return self.with_lr_scheduler(optimizer)

    def output_layer(self, items: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        if items is None:
            return self.output.weight, self.output.bias
        return self.output.weight[items], self.output.bias[items]
