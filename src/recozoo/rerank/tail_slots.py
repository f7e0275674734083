"""Tail slots: a share of every list's positions for the tail items the model's own top misses.

A list of the model's candidates in which position p (counted from 1) is a *tail slot* where
``floor(λ p)`` rises (λ = 0.2: positions 5, 10, 15, ...). A tail slot takes the best tail
candidate not yet listed; every other position takes the model's next candidate in order (or,
where that one was already listed in a tail slot, the best tail candidate not yet listed). So
every prefix of length p holds the model's top ``p - floor(λ p)`` and the ``floor(λ p)`` best
tail items below them: the slots bring up tail items the model ranked just out of reach,
not tail items it had already listed. A list of any length is the prefix of a longer one.

Ranked group fairness (Zehlike et al., "FA*IR: A Fair Top-k Ranking Algorithm", CIKM 2017) asks
only that a list hold a minimum number of protected items, counting those the model ranked
there itself; such a minimum in the top 10, tried on one run's lists (docs/long_tail.md),
raised tail recall less than slots reserved for the tail items below the model's top, at a
like NDCG. Unlike xQuAD and calibration, the slots do not depend on the user's history.
"""

from __future__ import annotations

import math

import torch

from recozoo.rerank.base import ItemFacts, Reranker, check_candidates, model_order


def tail_slots_among(places: int, weight: float) -> int:
    """How many of a list's first ``places`` places are tail slots at share ``weight``:
    ``floor(weight * places)`` (a small tolerance keeps 0.3 * 10 at 3)."""
    return math.floor(weight * places + 1e-9)


class TailSlots(Reranker):
    """A share λ of the list's positions for the best tail items below the model's own top.

    Args:
        weight: λ in [0, 1], the share of positions that are tail slots (0: the model's order;
            0.2: 2 of the top 10 and 4 of the top 20; 1: tail items only, while they last).
        candidates: the model's top-N candidates the slots draw from.

    Example:
        >>> items, scores = TailSlots(weight=0.2)(items, scores, k=10, history=history,
        ...                                       facts=facts)
    """

    name = "tail_slots"

    def __init__(self, weight: float = 0.2, candidates: int = 100):
        super().__init__(weight, candidates)

    def __call__(self, items: torch.Tensor, scores: torch.Tensor, k: int, history: torch.Tensor,
                 facts: ItemFacts) -> tuple[torch.Tensor, torch.Tensor]:
        """The list of `Reranker.__call__` (the history is not read)."""
        check_candidates(items, scores, k)
        items, scores = model_order(items, scores)  # columns in the model's order
        n = items.shape[1]
        column = torch.arange(n, device=items.device)
        none = torch.full_like(column, n)  # "no such column"
        tail = facts.tail_mask[items] & torch.isfinite(scores)  # (B, N)
        taken = torch.zeros_like(tail)
        rows = torch.arange(len(items), device=items.device)
        picks = []
        for position in range(1, k + 1):
            # the best tail candidate not yet listed, else the first candidate not yet listed
            free = ~taken
            best_tail = torch.where(tail & free, column, none).amin(1)  # (B,)
            first_free = torch.where(free, column, none).amin(1)
            fallback = torch.where(best_tail < n, best_tail, first_free)
            before = tail_slots_among(position - 1, self.weight)
            if tail_slots_among(position, self.weight) > before:  # a tail slot
                pick = fallback
            else:  # the model's next candidate: column (places so far - tail slots so far)
                model_next = position - 1 - before
                pick = torch.where(taken[:, model_next], fallback,
                                   torch.full_like(fallback, model_next))
            taken[rows, pick] = True
            picks.append(pick)
        order = torch.stack(picks, 1)  # (B, K)
        return items.gather(1, order), scores.gather(1, order)
