"""LightGCN: simplified graph convolution for collaborative filtering.

He, Deng, Wang, Li, Zhang and Wang, "LightGCN: Simplifying and Powering Graph Convolution
Network for Recommendation", SIGIR 2020. Users and items are nodes of the bipartite training
graph; their ID embeddings E^(0) are propagated without feature transforms or non-linearities,
``E^(k+1) = D^-1/2 A D^-1/2 E^(k)`` (eq. 7, a torch sparse product with the normalised adjacency
built once from the training interactions), and the final embedding is the mean of layers 0..K
(eq. 8, alpha_k = 1 / (K + 1)). Trained with the BPR loss on sampled negatives (the shared
``pairwise_loss``) plus ``reg_weight`` times the squared L2 norm of the batch's layer-0
embeddings per pair (eq. 15). Full-catalogue scores are ``user_final @ item_final.T``; in eval
mode the propagated embeddings are computed once and kept until training resumes.
"""

from __future__ import annotations

import torch
from torch import nn

from recozoo.data.contracts import DatasetInfo, EvalBatch, TrainView
from recozoo.models.base import Recommender
from recozoo.models.components.graph import TrainingGraph


def propagate(adjacency: torch.Tensor, embeddings: torch.Tensor, n_layers: int) -> torch.Tensor:
    """The mean of ``embeddings`` and its ``n_layers`` propagations through ``adjacency``.

    Args:
        adjacency: (n, n) normalised adjacency (sparse or dense).
        embeddings: (n, d) layer-0 node embeddings.
        n_layers: K, the number of propagation layers.

    Returns:
        (n, d) ``sum_k E^(k) / (K + 1)``.
    """
    layer, total = embeddings, embeddings
    for _ in range(n_layers):
        layer = adjacency @ layer  # (n, d)
        total = total + layer
    return total / (n_layers + 1)


class LightGCN(Recommender):
    """Light graph convolution over the user-item graph, BPR loss.

    Args:
        embedding_dim: size of the layer-0 embeddings.
        n_layers: K, propagation layers.
        reg_weight: L2 weight on the batch's layer-0 embeddings (lambda of eq. 15).
        batch_size: training pairs per batch.
        n_negatives: sampled negatives per positive.
    """

    def __init__(self, info: DatasetInfo, embedding_dim: int = 64, n_layers: int = 3,
                 reg_weight: float = 1e-4, batch_size: int = 2048, n_negatives: int = 1,
                 **kwargs):
        super().__init__(info, **kwargs)
        if n_layers < 0:
            raise ValueError(f"model.n_layers must be >= 0, got {n_layers}")
        self.n_layers, self.reg_weight = n_layers, reg_weight
        self.batch_size, self.n_negatives = batch_size, n_negatives
        self.graph = TrainingGraph(info)
        self.user_embedding = nn.Embedding(info.n_users, embedding_dim)
        self.item_embedding = nn.Embedding(info.n_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self._adjacency: torch.Tensor | None = None
        self._final: tuple[torch.Tensor, torch.Tensor] | None = None  # eval-mode cache

    def train_view(self) -> TrainView:
        return TrainView("pairs", batch_size=self.batch_size, n_negatives=self.n_negatives)

    def train(self, mode: bool = True) -> LightGCN:
        self._final = None  # the embeddings change while training
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._adjacency = self._final = None  # new edges or embeddings
        super()._load_from_state_dict(*args, **kwargs)

    def adjacency(self) -> torch.Tensor:
        """The normalised adjacency, built once (and again on another device)."""
        if self._adjacency is None or self._adjacency.device != self.graph.user.device:
            self._adjacency = self.graph.normalized_adjacency()
        return self._adjacency

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """((n_users, d), (n_items, d)) the propagated user and item embeddings."""
        if self.training:
            # Lightning restores training mode by setting ``training`` on each module, without
            # ``train()``: a cache left by validation must not be read (it has no gradient)
            self._final = None
        elif self._final is not None:
            return self._final
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])  # (n, d)
        final = propagate(self.adjacency(), ego, self.n_layers)
        users, items = final[:self.n_users], final[self.n_users:]
        if self.training:
            return users, items
        self._final = (users.detach(), items.detach())  # scoring needs no gradient
        return self._final

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, items = self.final_embeddings()
        user, pos, neg = batch["user"], batch["item"], batch["negative"]  # (B,) (B,) (B, n_neg)
        pos_score = (users[user] * items[pos]).sum(-1)  # (B,)
        neg_score = torch.einsum("bd,bnd->bn", users[user], items[neg])  # (B, n_neg)
        loss = self.pairwise_loss(pos, pos_score, neg, neg_score)
        if self.reg_weight:
            ego = (self.user_embedding(user).pow(2).sum() + self.item_embedding(pos).pow(2).sum()
                   + self.item_embedding(neg).pow(2).sum())
            loss = loss + self.reg_weight * ego / len(user)
        return loss

    def score(self, batch: EvalBatch) -> torch.Tensor:
        users, items = self.final_embeddings()
        return users[batch.user] @ items.T  # (B, n_items)

    def item_embeddings(self) -> torch.Tensor:
        """(n_items, d) the propagated item embeddings (``rerank=mmr``)."""
        return self.final_embeddings()[1]

    @property
    def n_params(self) -> int:
        """Fitted numbers; the training edges in the checkpoint are data, not counted."""
        return super().n_params - self.graph.saved_numbers
