"""Popularity-debiased training, for every model through the shared losses and sampler.

``debias=<none, ips, pop_neg>`` on the command line (conf/debias/). A `Debias` turns training
popularity into what the shared training code needs:

* ``loss_weights``: a weight per positive item for `Recommender.pairwise_loss` and
  `Recommender.cross_entropy_loss` (inverse propensity scoring);
* ``negative_probabilities``: the distribution `RecDataModule.sample_negatives` draws
  negatives from (popularity-aware negative sampling);
* ``logit_adjustment``: an offset added to the logits of the full-softmax loss, the softmax
  counterpart of sampling popular negatives more often.

Only training changes; evaluation always ranks by the model's plain scores.
"""

from __future__ import annotations

import numpy as np
import torch


class Debias:
    """No debiasing (``debias=none``): uniform negatives, unweighted losses."""

    name: str = "none"

    def loss_weights(self, item_popularity: torch.Tensor) -> torch.Tensor | None:
        """(n_items,) weight of a training positive of each item, or None (all 1)."""
        return None

    def negative_probabilities(self, item_popularity: np.ndarray) -> np.ndarray | None:
        """(n_items,) probabilities of drawing each item as a negative, or None (uniform)."""
        return None

    def logit_adjustment(self, item_popularity: torch.Tensor) -> torch.Tensor | None:
        """(n_items,) offsets added to training logits of the softmax loss, or None."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class IPS(Debias):
    """Inverse propensity scoring with popularity-based propensities.

    Schnabel et al., "Recommendations as Treatments: Debiasing Learning and Evaluation",
    ICML 2016; propensities from popularity as in Yang et al., "Unbiased Offline Recommender
    Evaluation for Missing-Not-At-Random Implicit Feedback", RecSys 2018, and Saito et al.,
    "Unbiased Recommender Learning from Missing-Not-At-Random Implicit Feedback", WSDM 2020
    (relative propensity ``(n_i / max n) ** α``, α = 0.5 there).

    The propensity of item i is ``max((n_i / max_j n_j) ** alpha, clip)``; a training positive
    of i is weighted ``1 / propensity``. Weights are scaled so their mean over training
    interactions is 1, so the loss keeps its scale and learning rates stay valid. The clip bounds
    the variance that rare items would add.

    Args:
        alpha: power α of the popularity propensity (0 = no debiasing, 1 = proportional).
        clip: smallest propensity (largest weight ``1 / clip`` before scaling).
    """

    name = "ips"

    def __init__(self, alpha: float = 0.5, clip: float = 0.05):
        if alpha < 0:
            raise ValueError(f"debias.alpha must be >= 0, got {alpha}")
        if not 0.0 < clip <= 1.0:
            raise ValueError(f"debias.clip must be within (0, 1], got {clip}")
        self.alpha, self.clip = float(alpha), float(clip)

    def propensity(self, item_popularity: torch.Tensor) -> torch.Tensor:
        """(n_items,) clipped relative propensities."""
        popularity = item_popularity.double()
        relative = popularity / popularity.max().clamp(min=1.0)
        return relative.pow(self.alpha).clamp(min=self.clip, max=1.0)

    def loss_weights(self, item_popularity: torch.Tensor) -> torch.Tensor:
        weights = 1.0 / self.propensity(item_popularity)
        popularity = item_popularity.double()
        mean = (weights * popularity).sum() / popularity.sum().clamp(min=1.0)
        return (weights / mean).float()


class PopularityNegatives(Debias):
    """Popularity-aware negative sampling.

    Negatives are drawn with probability proportional to ``(n_i + 1) ** exponent`` instead of
    uniformly (the unigram^0.75 sampler of Mikolov et al., NeurIPS 2013, used for implicit
    feedback by Chen et al., "On Sampling Strategies for Neural Network-based Collaborative
    Filtering", KDD 2017; see also Rendle and Freudenthaler, WSDM 2014). Popular items are
    then more often pushed below the positive, which counters popularity bias; exponent 0 is
    uniform sampling.

    Models with a full softmax draw no negatives: there the same idea is the logit adjustment
    of Menon et al., "Long-tail Learning via Logit Adjustment", ICLR 2021: training logits get
    ``tau * log(prior_i)`` added (prior = training popularity share), so the learnt scores
    favour popular items less. ``tau`` defaults to ``exponent``.

    Args:
        exponent: power of the popularity in the negative distribution.
        tau: logit-adjustment strength for the softmax loss (None: ``exponent``).
    """

    name = "pop_neg"

    def __init__(self, exponent: float = 0.75, tau: float | None = None):
        if exponent < 0:
            raise ValueError(f"debias.exponent must be >= 0, got {exponent}")
        self.exponent = float(exponent)
        self.tau = float(exponent if tau is None else tau)

    def negative_probabilities(self, item_popularity: np.ndarray) -> np.ndarray:
        weights = (np.asarray(item_popularity, dtype=np.float64) + 1.0) ** self.exponent
        return weights / weights.sum()

    def logit_adjustment(self, item_popularity: torch.Tensor) -> torch.Tensor | None:
        if self.tau == 0:
            return None
        prior = (item_popularity.double() + 1.0) / (item_popularity.double() + 1.0).sum()
        return (self.tau * prior.log()).float()


__all__ = ["IPS", "Debias", "PopularityNegatives"]
