"""Popularity-aware xQuAD.

Abdollahpouri, Burke and Mobasher, "Managing Popularity Bias in Recommender Systems with
Personalized Re-ranking", FLAIRS 2019; after Santos et al.'s xQuAD diversification (WWW 2010).
Items fall into two groups, the head H and the long tail T. A candidate ``i`` is appended to the
list S built so far by

    (1 - λ) P(i|u) + λ Σ_{c ∈ {H, T}} P(c|u) 1[i ∈ c] (1 - coverage(c, S))

where P(c|u) is the share of group c in the user's history (personalisation: a user who reads
the tail gets more of it), and coverage is binary in "binary xQuAD" (1 once S holds any item of
c) or the share of S in c in "smooth xQuAD".
"""

from __future__ import annotations

from typing import Literal

import torch

from recozoo.rerank.base import ItemFacts, Reranker, group_onehot, history_group_share


class XQuAD(Reranker):
    """Popularity-aware xQuAD over the head and tail groups (Abdollahpouri et al., 2019).

    Args:
        weight: λ in [0, 1].
        candidates: model top-N re-ranked.
        variant: ``smooth`` (coverage = share of the list in the group) or ``binary``.

    Example:
        >>> items, scores = XQuAD(weight=0.3)(items, scores, k=10, history=history, facts=facts)
    """

    name = "xquad"

    def __init__(self, weight: float = 0.3, candidates: int = 100,
                 variant: Literal["smooth", "binary"] = "smooth"):
        super().__init__(weight, candidates)
        if variant not in ("smooth", "binary"):
            raise ValueError(f"rerank.variant must be 'smooth' or 'binary', got {variant!r}")
        self.variant = variant

    def _start(self, items: torch.Tensor, history: torch.Tensor, facts: ItemFacts) -> dict:
        group = facts.tail_mask.long()  # 0 head, 1 tail
        return {"user_share": history_group_share(history, group, 2),  # (B, 2) P(c|u)
                "member": group_onehot(items, group, 2),  # (B, N, 2)
                "counts": torch.zeros(len(items), 2, device=items.device),  # (B, 2) in S
                "rows": torch.arange(len(items), device=items.device)}

    def _objective(self, relevance: torch.Tensor, state: dict) -> torch.Tensor:
        counts = state["counts"]
        if self.variant == "binary":
            uncovered = (counts == 0).float()  # (B, 2)
        else:
            uncovered = 1.0 - counts / counts.sum(1, keepdim=True).clamp(min=1)
        need = state["user_share"] * uncovered  # (B, 2)
        bonus = torch.einsum("bng,bg->bn", state["member"], need)  # (B, N)
        return (1.0 - self.weight) * relevance + self.weight * bonus

    def _update(self, state: dict, pick: torch.Tensor) -> None:
        state["counts"] += state["member"][state["rows"], pick]
