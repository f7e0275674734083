"""Most popular: every user gets the items with the most training interactions.

The non-personalised reference every leaderboard needs; it is also what long-tail methods try
not to collapse into.
"""

from __future__ import annotations

import torch

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.models.base import Recommender


class Pop(Recommender):
    """Scores each item by its training popularity (nothing to learn)."""

    fits_in_one_step = True
    scores_new_users = True

    def __init__(self, info: DatasetInfo, **kwargs):
        super().__init__(info, **kwargs)
        self.automatic_optimization = False

    def train_view(self) -> TrainView:
        return TrainView("matrix")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        return None  # popularity comes from training counts already in `info`

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return self.item_popularity.expand(len(batch), -1)  # (B, n_items)
