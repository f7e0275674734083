"""Biased matrix factorisation for explicit ratings ("SVD" of the Netflix Prize).

Koren, Bell and Volinsky, "Matrix Factorization Techniques for Recommender Systems", IEEE
Computer 42(8), 2009 (eq. 4-5); Funk's "Netflix Update: Try This at Home", 2006. A rating is
predicted as ``mu + b_u + b_i + <p_u, q_i>`` (global mean, user and item biases, user and item
factors) and the model is fitted by squared error on the observed ratings with L2 penalties on
the factors and biases of each batch. Predictions are clipped to the training rating range.
Full-catalogue scores are the predicted ratings of every item (one matrix product), so the
model also ranks.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from recozoo.data.contracts import DatasetInfo, EvalBatch, TrainView
from recozoo.models.base import Recommender


class BiasedMF(Recommender):
    """Global mean + user and item biases + a dot product of factors, squared error with L2.

    Args:
        embedding_dim: size of user and item factors.
        batch_size: ratings per training batch.
        factor_decay: L2 weight on the factors of each rating in a batch.
        bias_decay: L2 weight on the biases of each rating in a batch.
        init_std: standard deviation of the initial factors.
        n_negatives: zero-rated sampled items per interaction on data without explicit
            ratings (the ``ratings`` view rates observed items 1).

    Example:
        ``python train.py experiment=ratings model=svd``
    """

    predicts_ratings: ClassVar[bool] = True

    def __init__(self, info: DatasetInfo, embedding_dim: int = 64, batch_size: int = 1024,
                 factor_decay: float = 0.05, bias_decay: float = 0.001, init_std: float = 0.01,
                 n_negatives: int = 1, **kwargs):
        super().__init__(info, **kwargs)
        self.batch_size, self.n_negatives = batch_size, n_negatives
        self.factor_decay, self.bias_decay, self.init_std = factor_decay, bias_decay, init_std
        # the global mean starts at the training mean (a parameter: fitted, and saved)
        self.global_bias = nn.Parameter(torch.tensor(float(info.rating_mean or 0.0)))
        self.user_bias = nn.Embedding(info.n_users, 1)
        self.item_bias = nn.Embedding(info.n_items, 1)
        self.user_embedding = nn.Embedding(info.n_users, embedding_dim)
        self.item_embedding = nn.Embedding(info.n_items, embedding_dim)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        nn.init.normal_(self.user_embedding.weight, std=init_std)
        nn.init.normal_(self.item_embedding.weight, std=init_std)
        low, high = info.rating_range or (-torch.inf, torch.inf)
        # saved with the weights: a model rebuilt from a run folder clips as in training
        self.register_buffer("rating_range", torch.tensor([float(low), float(high)]))

    def train_view(self) -> TrainView:
        return TrainView("ratings", batch_size=self.batch_size, n_negatives=self.n_negatives)

    # ------------------------------------------------------------------ the prediction
    def user_vectors(self, user: torch.Tensor) -> torch.Tensor:
        """(B, d) the users' factors (SVD++ adds its implicit term here)."""
        return self.user_embedding(user)

    def _raw_rating(self, user: torch.Tensor, item: torch.Tensor,
                    vectors: torch.Tensor) -> torch.Tensor:
        """(B,) unclipped ``mu + b_u + b_i + <p_u, q_i>``; ``vectors``: (B, d) user vectors."""
        dot = (vectors * self.item_embedding(item)).sum(-1)  # (B,)
        return (self.global_bias + self.user_bias(user).squeeze(-1)
                + self.item_bias(item).squeeze(-1) + dot)

    def predict_rating(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(B,) predicted ratings of (user, item) pairs, clipped to the training range."""
        raw = self._raw_rating(user, item, self.user_vectors(user))
        return raw.clamp(self.rating_range[0], self.rating_range[1])

    def score(self, batch: EvalBatch) -> torch.Tensor:
        """(B, n_items) the predicted rating of every item (unclipped, so ties stay ordered)."""
        vectors = self.user_vectors(batch.user)  # (B, d)
        # into the memory the batch offers, the biases added in place in the order of the sum
        # (the product's gradient does not read its result)
        scores = batch.dot_scores(vectors, self.item_embedding.weight,
                                  self.item_bias.weight[:, 0])  # (B, n_items)
        return scores.add_(self.user_bias(batch.user)).add_(self.global_bias)

    # ------------------------------------------------------------------ training
    def regularizer(self, batch: dict[str, torch.Tensor], vectors: torch.Tensor) -> torch.Tensor:
        """L2 of the factors and biases that the batch's ratings touch, per rating;
        ``vectors``: (B, d) the batch's user vectors."""
        user, item = batch["user"], batch["item"]
        factors = self.user_embedding(user).pow(2).sum(-1) + self.item_embedding(item).pow(2).sum(-1)
        biases = self.user_bias(user).pow(2).squeeze(-1) + self.item_bias(item).pow(2).squeeze(-1)
        return (self.factor_decay * factors + self.bias_decay * biases).mean()

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user, item = batch["user"], batch["item"]
        vectors = self.user_vectors(user)  # (B, d)
        predicted = self._raw_rating(user, item, vectors)  # (B,)
        return (torch.nn.functional.mse_loss(predicted, batch["rating"])
                + self.regularizer(batch, vectors))
