"""The fusion maths shared by the ensemble (saved lists) and serving (live lists): how one
member's ranked list of a user becomes the values that are summed across members.

``normalise_lists`` is the only implementation; `recozoo.ensemble.fusion` calls it on the
rankings a run saved and `recozoo.serve.loading.FusedScorer` on the lists a loaded model ranks,
so a served fusion ranks as the evaluated one did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

METHODS = ("weighted", "rrf")
NORMALISATIONS = ("minmax", "zscore")


@dataclass(frozen=True)
class FusionRule:
    """How members' lists are normalised (fusion.json's "spec").

    Args:
        method: ``weighted`` (normalised scores summed with weights) or ``rrf`` (reciprocal
            rank fusion: ``1 / (rrf_k + rank)``; Cormack et al., SIGIR 2009).
        normalization: ``minmax`` or ``zscore`` over a member's list of a user (weighted only).
        rrf_k: the constant of reciprocal rank fusion.
    """

    method: str = "weighted"
    normalization: str = "minmax"
    rrf_k: int = 60

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"fusion method must be one of {METHODS}, got {self.method!r}")
        if self.normalization not in NORMALISATIONS:
            raise ValueError(f"fusion normalization must be one of {NORMALISATIONS}, got "
                             f"{self.normalization!r}")
        if self.rrf_k < 0:
            raise ValueError(f"fusion rrf_k must be >= 0, got {self.rrf_k}")


def normalise_lists(scores: torch.Tensor, valid: torch.Tensor, rule: FusionRule,
                    by_position: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise each row's ranked list.

    Args:
        scores: (B, N) scores of each user's list, in list order (position 0 is rank 1).
        valid: (B, N) True where the list has an item (a short list is padded at its end).
        rule: the fusion rule.
        by_position: the member's order is not the order of its scores, so its values come
            from the positions (``-rank`` in place of the scores, then normalised alike): a
            re-ranker (``rerank=``) re-orders the model's top items but keeps their model
            scores, and summing those scores would restore the model's order, undoing the
            re-ranking in the fusion.

    Returns:
        (B, N) float64 normalised values (undefined where not valid) and (B, 1) each row's
        floor: the value of an item the member did not list (0, or after z-scoring the lowest
        listed value). Min-max maps a list whose scores are all equal to 1; z-scoring uses the
        sample standard deviation, and 1 where it is 0 or undefined (one item).
    """
    scores = scores.double()
    zero = torch.zeros(len(scores), 1, dtype=torch.float64, device=scores.device)
    if rule.method == "rrf" or by_position:
        ranks = torch.cumsum(valid.long(), dim=1).double()
        if rule.method == "rrf":
            return 1.0 / (rule.rrf_k + ranks), zero
        scores = -ranks
    if rule.normalization == "minmax":
        high = scores.masked_fill(~valid, -math.inf).max(1, keepdim=True).values
        low = scores.masked_fill(~valid, math.inf).min(1, keepdim=True).values
        spread = high - low
        values = torch.where(spread > 0, (scores - low) / spread.clamp_min(1e-300),
                             torch.ones_like(scores))
        return values, zero
    count = valid.sum(1, keepdim=True).clamp_min(1)
    mean = scores.masked_fill(~valid, 0.0).sum(1, keepdim=True) / count
    var = ((scores - mean).masked_fill(~valid, 0.0) ** 2).sum(1, keepdim=True) \
        / (count - 1).clamp_min(1)
    std = var.sqrt()
    values = (scores - mean) / torch.where(std > 0, std, torch.ones_like(std))
    floor = values.masked_fill(~valid, math.inf).min(1, keepdim=True).values
    return values, torch.where(torch.isfinite(floor), floor, zero)
