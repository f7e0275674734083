"""LightGCN: simplified graph convolution for collaborative filtering.

He, Deng, Wang, Li, Zhang and Wang, "LightGCN: Simplifying and Powering Graph Convolution
Network for Recommendation", SIGIR 2020. Users and items are nodes of the bipartite training
graph; their ID embeddings E^(0) are propagated without feature transforms or non-linearities,
``E^(k+1) = D^-1/2 A D^-1/2 E^(k)`` (eq. 7, a torch sparse product with the normalised adjacency
built once from the training interactions), and the final embedding is the mean of layers 0..K
(eq. 8, alpha_k = 1 / (K + 1)). The propagation is the paper's; the loss is an option:

* ``loss=bpr`` (the paper's): BPR on sampled negatives (the shared ``pairwise_loss``);
* ``loss=softmax`` (the default): softmax cross-entropy of each training pair against the whole
  catalogue (the shared ``cross_entropy_loss``), or above ``SAMPLED_SOFTMAX_ABOVE`` items
  against ``n_sampled`` negatives shared by the batch with the log-Q correction
  (``sampled_cross_entropy_loss``). With ``normalize`` the scores are cosines, and they are
  divided by ``temperature``: LightGCN with the sampled-softmax loss of Wu et al., "On the
  Effectiveness of Sampled Softmax Loss for Item Recommendation" (TOIS 2024), whose cosine
  scores and temperature are also those of SimpleX (Mao et al., CIKM 2021). Test NDCG@10 over
  seeds 1-3 (``conf/model/lightgcn.yaml``): shop .091 against .067 with BPR, ml-100k .313
  against .296.

Both add ``reg_weight`` times the squared L2 norm of the batch's layer-0 embeddings per pair
(eq. 15). Full-catalogue scores are ``user_final @ item_final.T`` (scaled as above); in eval
mode the propagated embeddings are computed once and kept until training resumes. With
``fold_in`` a user is scored from its evaluation inputs (`LightGCN.fold_in_users`): at test
time the validation items join the user's row of the graph, as they join the history that
EASE, ItemKNN or Mult-VAE read, where the training-graph embedding cannot see them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recozoo.data.contracts import DatasetInfo, EvalBatch, TrainView
from recozoo.models.base import Recommender
from recozoo.models.components.graph import TrainingGraph
from recozoo.models.components.lookup import rows
from recozoo.models.components.sequence import NegativeSampler
from recozoo.models.losses import negative_scores
from recozoo.models.sequential import SAMPLED_SOFTMAX_ABOVE


def propagate_layers(adjacency: torch.Tensor, embeddings: torch.Tensor,
                     n_layers: int) -> list[torch.Tensor]:
    """``[E^(0), ..., E^(K)]``: ``embeddings`` and its ``n_layers`` propagations through
    ``adjacency`` (eq. 7), each (n, d)."""
    layers = [embeddings]
    for _ in range(n_layers):
        layers.append(adjacency @ layers[-1])  # (n, d)
    return layers


def propagate(adjacency: torch.Tensor, embeddings: torch.Tensor, n_layers: int) -> torch.Tensor:
    """The mean of ``embeddings`` and its ``n_layers`` propagations through ``adjacency``.

    Args:
        adjacency: (n, n) normalised adjacency (sparse or dense).
        embeddings: (n, d) layer-0 node embeddings.
        n_layers: K, the number of propagation layers.

    Returns:
        (n, d) ``sum_k E^(k) / (K + 1)``.
    """
    return torch.stack(propagate_layers(adjacency, embeddings, n_layers)).mean(0)


class LightGCN(Recommender):
    """Light graph convolution over the user-item graph, softmax or BPR loss.

    Args:
        embedding_dim: size of the layer-0 embeddings.
        n_layers: K, propagation layers.
        reg_weight: L2 weight on the batch's layer-0 embeddings (lambda of eq. 15).
        batch_size: training pairs per batch.
        n_negatives: sampled negatives per positive (``loss=bpr``).
        loss: ``softmax`` (cross-entropy over the catalogue) or ``bpr`` (the paper's).
        temperature: scores are divided by it, in training and ranking (> 0).
        normalize: score with cosines instead of dot products.
        sampled_softmax: softmax over ``n_sampled`` shared negatives (log-Q corrected) instead
            of the catalogue; None: sampled above ``SAMPLED_SOFTMAX_ABOVE`` items.
        n_sampled: negatives per batch for the sampled softmax.
        negative_sampling: ``popularity`` or ``uniform`` (`NegativeSampler`).
        fold_in: score users from their evaluation inputs (`fold_in_users`).
    """

    def __init__(self, info: DatasetInfo, embedding_dim: int = 64, n_layers: int = 3,
                 reg_weight: float = 1e-4, batch_size: int = 2048, n_negatives: int = 1,
                 loss: str = "softmax", temperature: float = 0.2, normalize: bool = True,
                 sampled_softmax: bool | None = None, n_sampled: int = 1000,
                 negative_sampling: str = "popularity", fold_in: bool = True, **kwargs):
        super().__init__(info, **kwargs)
        if n_layers < 0:
            raise ValueError(f"model.n_layers must be >= 0, got {n_layers}")
        self.n_layers, self.reg_weight = n_layers, reg_weight
        self.batch_size, self.n_negatives = batch_size, n_negatives
        if loss not in ("bpr", "softmax"):
            raise ValueError(f"model.loss must be 'bpr' or 'softmax', got '{loss}'")
        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {temperature}")
        if n_sampled < 1:
            raise ValueError(f"model.n_sampled must be >= 1, got {n_sampled}")
        self.loss_name, self.temperature, self.normalize = loss, float(temperature), normalize
        self.sampled_softmax = (info.n_items > SAMPLED_SOFTMAX_ABOVE if sampled_softmax is None
                                else bool(sampled_softmax))
        self.n_sampled = int(n_sampled)
        self.fold_in = bool(fold_in)
        self.negative_sampler = NegativeSampler(info.item_popularity, negative_sampling)
        self.graph = TrainingGraph(info)
        self.user_embedding = nn.Embedding(info.n_users, embedding_dim)
        self.item_embedding = nn.Embedding(info.n_items, embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self._adjacency: torch.Tensor | None = None
        self._final: tuple[torch.Tensor, torch.Tensor] | None = None  # eval-mode cache
        self._item_layers: list[torch.Tensor] = []  # K x (n_items, d), eval-mode cache
        self._item_degree: torch.Tensor | None = None

    def train_view(self) -> TrainView:
        return TrainView("pairs", batch_size=self.batch_size, n_negatives=self.n_negatives)

    def train(self, mode: bool = True) -> LightGCN:
        self._final = None  # the embeddings change while training
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._adjacency = self._final = self._item_degree = None  # new edges or embeddings
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
        layers = propagate_layers(self.adjacency(), ego, self.n_layers)
        final = torch.stack(layers).mean(0)  # (n, d)
        users, items = final[:self.n_users], final[self.n_users:]
        if self.training:
            return users, items
        self._final = (users.detach(), items.detach())  # scoring needs no gradient
        # fold-in reads the item layers 0..K-1 (a user's layer k + 1 comes from them)
        self._item_layers = [layer[self.n_users:].detach() for layer in layers[:-1]]
        return self._final

    def fold_in_users(self, batch: EvalBatch) -> torch.Tensor:
        """(B, d) final user embeddings propagated from the batch's inputs: the user's row of the
        graph holds its input items ``S`` (at test time the validation items too), so layer
        ``k + 1`` is ``sum_{i in S} E_i^(k) / sqrt(|S| d_i)`` with the items' layers and degrees
        ``d_i`` of the training graph, and the final embedding is the mean of the user's own
        layer-0 embedding and these K layers. With the training items as inputs it is the
        transductive user embedding."""
        self.final_embeddings()  # fills the item layers (eval mode)
        seen = batch.seen_matrix(self.n_items)  # (B, n_items)
        weights = (seen * seen.sum(1, keepdim=True).clamp(min=1).rsqrt()
                   * self.item_degree().rsqrt())  # (B, n_items)
        layers = [self.user_embedding(batch.user)] + [weights @ layer
                                                       for layer in self._item_layers]
        return torch.stack(layers).mean(0)  # (B, d)

    def item_degree(self) -> torch.Tensor:
        """(n_items,) training users per item (at least 1)."""
        if self._item_degree is None or self._item_degree.device != self.graph.item.device:
            items = self.graph.user_item().indices()[1]
            self._item_degree = torch.bincount(items, minlength=self.n_items).float().clamp(min=1)
        return self._item_degree

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users, items = self.final_embeddings()
        user, pos = batch["user"], batch["item"]  # (B,) (B,)
        if self.loss_name == "softmax":
            return self._softmax_loss(rows(users, user), items, pos) + self._l2(user, pos)
        neg = batch["negative"]  # (B, n_neg)
        user_vectors = rows(users, user)  # (B, d)
        pos_score = (user_vectors * rows(items, pos)).sum(-1)  # (B,)
        neg_score = negative_scores(user_vectors, rows(items, neg))  # (B, n_neg)
        return self.pairwise_loss(pos, pos_score, neg, neg_score) + self._l2(user, pos, neg)

    def _softmax_loss(self, user: torch.Tensor, items: torch.Tensor,
                      pos: torch.Tensor) -> torch.Tensor:
        """Softmax cross-entropy of each positive against the catalogue (or the sampled
        negatives), from the (B, d) user and (n_items, d) item final embeddings."""
        user, items = self._scaled(user, items)
        if not self.sampled_softmax:
            return self.cross_entropy_loss(user @ items.T, pos)  # (B, n_items) logits
        negatives = self.negative_sampler(self.n_sampled)  # (k,)
        pos_logits = (user * rows(items, pos)).sum(-1)  # (B,)
        neg_logits = user @ rows(items, negatives).T  # (B, k)
        return self.sampled_cross_entropy_loss(pos_logits, neg_logits, pos, negatives,
                                               self.negative_sampler.log_q)

    def _scaled(self, users: torch.Tensor, items: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) whose dot products are the scores: unit vectors when ``normalize``
        (cosines), the users divided by the temperature."""
        if self.normalize:
            users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
        return users / self.temperature, items

    def _l2(self, user: torch.Tensor, *items: torch.Tensor) -> torch.Tensor | float:
        """``reg_weight`` x the squared L2 norm of the batch's layer-0 embeddings per row."""
        if not self.reg_weight:
            return 0.0
        norm = self.user_embedding(user).pow(2).sum()
        for item in items:
            norm = norm + self.item_embedding(item).pow(2).sum()
        return self.reg_weight * norm / len(user)

    def score(self, batch: EvalBatch) -> torch.Tensor:
        users, items = self.final_embeddings()
        user = self.fold_in_users(batch) if self.fold_in else users[batch.user]  # (B, d)
        user, items = self._scaled(user, items)
        return batch.dot_scores(user, items)  # (B, n_items)

    def item_embeddings(self) -> torch.Tensor:
        """(n_items, d) the propagated item embeddings (``rerank=mmr``)."""
        return self.final_embeddings()[1]

    @property
    def n_params(self) -> int:
        """Fitted numbers; the training edges in the checkpoint are data, not counted."""
        return super().n_params - self.graph.saved_numbers
