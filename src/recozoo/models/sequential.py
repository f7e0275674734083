"""`SequentialRecommender`: the shared training and scoring of next-item models.

A sequential model encodes a left-padded item sequence into one state per position and scores
every item from a state. Training uses the ``sequences`` view: each window of a user's
chronological training items is one row, and *every* position predicts the item that follows it,
with softmax cross-entropy over the whole catalogue (``Recommender.cross_entropy_loss``). One
forward pass therefore trains on all prefixes of a window, as SASRec and whole-sequence GRU4Rec
do, and full cross-entropy is what makes SASRec strong (Petrov & Macdonald, "gSASRec", RecSys
2023; Klenitskiy & Vasilev, RecSys 2023). Scoring reads the state after the user's newest item.
"""

from __future__ import annotations

import torch

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.models.base import Recommender


class SequentialRecommender(Recommender):
    """Base of Caser, GRU4Rec and SASRec.

    Subclasses implement ``encode(seq, user) -> (B, L, d)`` and ``item_logits(states) ->
    (..., n_items)``.

    Args:
        max_len: training window length, and the number of recent items read when scoring.
        batch_size: windows per training batch.
    """

    def __init__(self, info: DatasetInfo, max_len: int = 50, batch_size: int = 256, **kwargs):
        super().__init__(info, **kwargs)
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len, self.batch_size = int(max_len), int(batch_size)

    def train_view(self) -> TrainView:
        return TrainView("sequences", batch_size=self.batch_size, max_len=self.max_len)

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """(B, L, d) one state per position of the left-padded ``seq`` (B, L)."""
        raise NotImplementedError

    def item_logits(self, states: torch.Tensor) -> torch.Tensor:
        """(..., n_items) item scores from (..., d) states."""
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states = self.encode(batch["input"], batch["user"])  # (B, L, d)
        target = batch["target"]  # (B, L), -100 where there is nothing to predict
        keep = target != -100
        logits = self.item_logits(states[keep])  # (N, n_items)
        return self.cross_entropy_loss(logits, target[keep])

    def encode_last(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """(B, d) the state after the newest item of ``seq``; encoders that can compute it
        more cheaply than every position override this."""
        return self.encode(seq, user)[:, -1]

    def score(self, batch: EvalBatch) -> torch.Tensor:
        history = batch.history[:, -self.max_len:]  # (B, L)
        return self.item_logits(self.encode_last(history, batch.user))  # (B, n_items)
