"""Calibrated recommendations.

Steck, "Calibrated Recommendations", RecSys 2018. The list's distribution over item groups,
q(g|I), should match the user's history distribution p(g|u). The greedy list maximises

    (1 - λ) Σ_{i ∈ I} s(i) - λ KL(p || q̃),    q̃ = (1 - α) q + α p

(α small, so the divergence stays finite). Groups are the popularity buckets (head, mid, distant;
the "calibrated popularity" of Abdollahpouri et al., RecSys 2021) or the item categories.
Steck's history and list weights are uniform here.
"""

from __future__ import annotations

from typing import Literal

import torch

from recozoo.rerank.base import ItemFacts, Reranker, history_group_share


class Calibrated(Reranker):
    """Steck's calibration of the list's group mix to the user's history (RecSys 2018).

    Args:
        weight: λ in [0, 1].
        candidates: model top-N re-ranked.
        groups: ``popularity`` (head/mid/distant buckets) or ``category`` (needs item categories).
        alpha: the smoothing α of q̃.
    """

    name = "calibrated"

    def __init__(self, weight: float = 0.5, candidates: int = 100,
                 groups: Literal["popularity", "category"] = "popularity", alpha: float = 0.01):
        super().__init__(weight, candidates)
        if groups not in ("popularity", "category"):
            raise ValueError(f"rerank.groups must be 'popularity' or 'category', got {groups!r}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"rerank.alpha must be within (0, 1), got {alpha}")
        self.groups, self.alpha = groups, float(alpha)

    def _start(self, items: torch.Tensor, history: torch.Tensor, facts: ItemFacts) -> dict:
        if self.groups == "category":
            if facts.category is None:
                raise ValueError("rerank=calibrated with rerank.groups=category needs item "
                                 "categories, and this dataset has none (set the source's "
                                 "category_field, or use rerank.groups=popularity)")
            item_group = facts.category.long()
            n_groups = int(item_group.max()) + 1
        else:
            item_group, n_groups = facts.bucket.long(), 3
        return {"target": history_group_share(history, item_group, n_groups),  # (B, G) p(g|u)
                "group": item_group[items],  # (B, N)
                "counts": torch.zeros(len(items), n_groups, device=items.device),  # (B, G)
                "size": 0,
                "rows": torch.arange(len(items), device=items.device)}

    def _objective(self, relevance: torch.Tensor, state: dict) -> torch.Tensor:
        p, counts, group = state["target"], state["counts"], state["group"]
        size = state["size"] + 1  # the list with the candidate appended
        # Σ_g p log q̃ for S ∪ {i} differs from S's counts (over |S|+1) only in i's group
        base = (1 - self.alpha) * counts / size + self.alpha * p  # (B, G)
        cross = torch.special.xlogy(p, base).sum(1, keepdim=True)  # (B, 1)
        p_i, base_i = p.gather(1, group), base.gather(1, group)  # (B, N)
        with_i = base_i + (1 - self.alpha) / size
        cross = cross - torch.special.xlogy(p_i, base_i) + p_i * torch.log(with_i)  # (B, N)
        entropy = torch.special.xlogy(p, p).sum(1, keepdim=True)  # (B, 1)
        kl = entropy - cross
        return (1.0 - self.weight) * relevance - self.weight * kl

    def _update(self, state: dict, pick: torch.Tensor) -> None:
        rows = state["rows"]
        state["counts"][rows, state["group"][rows, pick]] += 1.0
        state["size"] += 1
