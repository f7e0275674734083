"""The losses every model trains through, with the popularity debiasing (``debias=``) applied
once, here, for all of them: `SharedLosses` is a mixin of `recozoo.models.base.Recommender`.

A model using it has the ``item_popularity``, ``positive_weight`` (IPS, (n_items,) or None) and
``logit_offset`` (logit adjustment, (n_items,) or None) buffers that `Recommender` registers.
"""

from __future__ import annotations

import math

import torch

from recozoo.debias import Debias


def negative_scores(user: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """(B, n_neg) dot products of users (B, d) with their sampled negatives (B, n_neg, d).

    A broadcast product, not ``einsum("bd,bnd->bn")``: einsum runs a batched matmul that is 3x
    slower for these shapes on CPU (a third of a BPR training step)."""
    return (user[:, None, :] * negatives).sum(-1)


class SharedLosses:
    """BPR, softmax cross-entropy (full and sampled) and multinomial losses, debiased alike."""

    item_popularity: torch.Tensor
    positive_weight: torch.Tensor | None
    logit_offset: torch.Tensor | None
    debias: Debias | None

    # Every model trains through one of these two, so that loss-level options (e.g. popularity
    # debiasing) are implemented once, here, for all models.
    def pairwise_loss(self, pos_item: torch.Tensor, pos_score: torch.Tensor,
                      neg_item: torch.Tensor, neg_score: torch.Tensor) -> torch.Tensor:
        """BPR loss ``-log sigmoid(s_pos - s_neg)`` averaged over pairs; under ``debias=ips``
        each positive's pairs are weighted by its inverse propensity (`recozoo.debias.IPS`).

        Args:
            pos_item: (B,) positive items; pos_score: (B,) their scores.
            neg_item: (B, n_neg) sampled negatives; neg_score: (B, n_neg) their scores.
        """
        loss = -torch.nn.functional.logsigmoid(pos_score[:, None] - neg_score)  # (B, n_neg)
        if self.positive_weight is None:
            return loss.mean()
        return (loss.mean(1) * self.positive_weight[pos_item]).mean()

    def cross_entropy_loss(self, logits: torch.Tensor, target: torch.Tensor,
                           weight: torch.Tensor | None = None,
                           columns: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax cross-entropy over items; ``target`` entries of -100 are ignored. Under
        ``debias=ips`` each target is weighted by its inverse propensity; under
        ``debias=pop_neg`` the logits get the popularity logit adjustment
        (`recozoo.debias.PopularityNegatives`).

        Args:
            logits: (N, n_items) scores, or (N, C) scores of the items ``columns``.
            target: (N,) item indices.
            weight: (N,) the model's own weight of each target (None: equal); the loss is the
                weighted mean (times the inverse propensities under ``debias=ips``).
            columns: (C,) ascending items of the logits' columns, every kept target among
                them: the softmax over those items alone, as the full one with every other
                item's logit at -inf, without its (N, n_items) matrix. None: every item.
        """
        offset, index = self.logit_offset, target
        if columns is not None:
            offset = None if offset is None else offset[columns]  # (C,)
            at = torch.searchsorted(columns, target.clamp(min=0))  # (N,): a target's column
            index = torch.where(target == -100, target, at)
        if offset is not None:
            logits = logits + offset  # (N, n_items) or (N, C)
        if self.positive_weight is None and weight is None:
            return torch.nn.functional.cross_entropy(logits, index, ignore_index=-100)
        loss = torch.nn.functional.cross_entropy(logits, index, ignore_index=-100,
                                                 reduction="none")  # (N,)
        keep = target != -100
        scale = keep.to(loss.dtype) if weight is None else weight * keep
        total = scale.sum()  # the kept targets, or their weight
        if self.positive_weight is not None:
            scale = scale * self.positive_weight[target.clamp(min=0)]
        return (loss * scale).sum() / total.clamp(min=1e-12)  # 0 / 0: no kept target, loss 0

    def sampled_cross_entropy_loss(self, pos_logits: torch.Tensor, neg_logits: torch.Tensor,
                                   target: torch.Tensor, negatives: torch.Tensor,
                                   log_q: torch.Tensor) -> torch.Tensor:
        """Sampled softmax cross-entropy with the log-Q correction: the softmax over each target
        and ``k`` negatives drawn from ``Q`` (shared by the batch), each negative's logit lowered
        by ``log(k Q(item))``, so that ``sum_j exp(s_j) / (k Q(j))`` estimates the full
        softmax's normaliser (Bengio & Senecal, IEEE TNN 2008; Yi et al., "Sampling-Bias-
        Corrected Neural Modeling for Large Corpus Item Recommendations", RecSys 2019; the target
        keeps its logit, as in Blanc & Rendle, ICML 2018). A negative equal to the row's target
        is left out of that row. Debiasing acts as in ``cross_entropy_loss``.

        Args:
            pos_logits: (N,) scores of the targets; target: (N,) their items.
            neg_logits: (N, k) scores of the shared negatives; negatives: (k,) their items.
            log_q: (n_items,) log sampling probability of every item.
        """
        pos = pos_logits  # (N,)
        neg = neg_logits - log_q[negatives] - math.log(len(negatives))  # (N, k)
        if self.logit_offset is not None:
            pos, neg = pos + self.logit_offset[target], neg + self.logit_offset[negatives]
        neg = neg.masked_fill(negatives[None, :] == target[:, None], float("-inf"))
        loss = torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos  # (N,)
        if self.positive_weight is None:
            return loss.mean()
        return (loss * self.positive_weight[target]).mean()

    def multinomial_loss(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Multinomial negative log-likelihood of each user's row of items (Mult-VAE/DAE),
        summed over the user's items and averaged over users: the softmax cross-entropy of
        ``cross_entropy_loss`` for every (user, item) pair, with the same debiasing, computed
        in one (B, n_items) pass instead of one row per pair.

        Args:
            logits: (B, n_items) scores; rows: (B, n_items) 0/1 interaction rows, dense or
                sparse COO (coalesced; then only the inputs' log-probabilities are read).
        """
        if self.logit_offset is not None:
            logits = logits + self.logit_offset  # (B, n_items)
        log_prob = torch.log_softmax(logits, dim=1)  # (B, n_items)
        if rows.is_sparse:
            user, item = rows.indices()  # (nnz,) each
            weights = rows.values()
            if self.positive_weight is not None:
                weights = weights * self.positive_weight[item]
            return -(log_prob[user, item] * weights).sum() / rows.shape[0]
        weights = rows if self.positive_weight is None else rows * self.positive_weight
        return -(log_prob * weights).sum() / len(rows)

    def configure_debias(self, debias: Debias | None = None) -> None:
        """Set the popularity debiasing of the shared losses (``debias=``; its negative sampler
        is set on the DataModule); None turns it off."""
        self.debias = debias
        popularity = self.item_popularity
        weight = debias.loss_weights(popularity) if debias is not None else None
        offset = debias.logit_adjustment(popularity) if debias is not None else None
        self.positive_weight = None if weight is None else weight.to(popularity.device)
        self.logit_offset = None if offset is None else offset.to(popularity.device)
