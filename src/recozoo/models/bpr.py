"""BPR-MF: matrix factorisation trained with Bayesian Personalized Ranking.

Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009.
User and item embeddings; for each observed (user, item) and a sampled unobserved item the loss
is ``-log sigmoid(s(u, i) - s(u, j))`` with ``s(u, i) = <p_u, q_i>``. Full-catalogue scores are
one matrix product.

The tables have sparse gradients above `SPARSE_ABOVE_ROWS` users + items (``sparse="auto"``, the
default; below it a dense update is cheaper): a step updates only the rows of the batch's users
and items (`recozoo.models.optimizers.LazyAdam`, SparseAdam's update; see
`recozoo.models.optimizers.build_optimizer`), so an epoch costs O(interactions) rather than
O(interactions x (users + items)) as with dense Adam over whole tables.
"""

from __future__ import annotations

import torch
from torch import nn

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.models.base import Recommender
from recozoo.models.components.lookup import embedding_rows
from recozoo.models.optimizers import use_sparse


class BPR(Recommender):
    """Matrix factorisation with the pairwise BPR loss.

    Args:
        embedding_dim: size of user and item embeddings.
        batch_size: training pairs per batch.
        n_negatives: sampled negatives per positive (the loss averages over them).
        weight_decay: L2 penalty on the embeddings used in a batch.
        sparse: sparse gradients for the tables (updated by ``sparse_optimizer``, only the
            rows a batch touches); False: dense gradients and ``optimizer`` for everything;
            "auto": sparse above `SPARSE_ABOVE_ROWS` users + items.
    """

    def __init__(self, info: DatasetInfo, embedding_dim: int = 64, batch_size: int = 2048,
                 n_negatives: int = 1, weight_decay: float = 0.0,
                 sparse: bool | str = "auto", **kwargs):
        super().__init__(info, **kwargs)
        sparse = use_sparse(sparse, info.n_users + info.n_items)
        self.batch_size, self.n_negatives, self.weight_decay = batch_size, n_negatives, weight_decay
        self.user_embedding = nn.Embedding(info.n_users, embedding_dim, sparse=sparse)
        self.item_embedding = nn.Embedding(info.n_items, embedding_dim, sparse=sparse)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)

    def train_view(self) -> TrainView:
        return TrainView("pairs", batch_size=self.batch_size, n_negatives=self.n_negatives)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        user = embedding_rows(self.user_embedding, batch["user"])  # (B, d)
        # one lookup for positives and negatives: one table-sized gradient, not two
        items = embedding_rows(self.item_embedding,
                               torch.cat([batch["item"][:, None], batch["negative"]], 1))
        # one product for both, split afterwards: taking items[:, 0] and items[:, 1:] apart
        # costs their backward a zero-filled copy of the whole (B, 1 + n_neg, d) block each
        # (ml-100k, one thread: 53-55 ms per 40-step epoch of loss, backward and Adam against 68)
        scores = (user[:, None, :] * items).sum(-1)  # (B, 1 + n_neg)
        pos_score, neg_score = scores.split([1, scores.shape[1] - 1], dim=1)
        loss = self.pairwise_loss(batch["item"], pos_score.squeeze(1), batch["negative"],
                                  neg_score)
        if self.weight_decay:
            loss = loss + self.weight_decay * (user.pow(2).sum() + items.pow(2).sum()) / len(user)
        return loss

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return self.user_embedding(batch.user) @ self.item_embedding.weight.T  # (B, n_items)
