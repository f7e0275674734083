"""Most popular: every user gets the items with the most training interactions.

The non-personalised reference every leaderboard needs; it is also what long-tail methods try
not to collapse into.
"""

from __future__ import annotations

import torch

from recozoo.data.datamodule import EvalBatch
from recozoo.models.base import ClosedFormRecommender


class Pop(ClosedFormRecommender):
    """Scores each item by its training popularity (nothing to learn)."""

    scores_new_users = True

    def fit(self, batch: dict[str, torch.Tensor]) -> None:
        """Nothing to fit: popularity comes from the training counts already in `info`."""

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return batch.same_scores(self.item_popularity)  # (B, n_items)
