"""The shared machinery of re-rankers: item facts, and a batched greedy list builder.

A re-ranker takes the top-N candidates of any model, ``items`` (B, N) with their ``scores``
(B, N), and returns a new top-K order (B, K). Every method here is greedy: at each of the K
output positions it scores every remaining candidate of every user at once (a (B, N) tensor)
and picks the best; the only Python loop is over the K positions. The same function serves the
evaluation path (`Recommender`), the fusion ensemble and the serving ``tail_boost`` and
``tail_slots`` options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from recozoo.data.datamodule import DatasetInfo
from recozoo.data.popularity import BUCKETS, DEFAULT_HEAD_SHARE


@dataclass
class ItemFacts:
    """What re-rankers may know about items (all (n_items,) tensors, or (n_items, d)).

    Args:
        tail_mask: True for tail items (everything outside the head).
        bucket: popularity bucket per item: 0 head, 1 mid, 2 distant (see ``popularity_buckets``).
        category: category index per item, or None.
        embeddings: (n_items, d) item vectors (from the model), or None.
    """

    tail_mask: torch.Tensor
    bucket: torch.Tensor
    category: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None

    @classmethod
    def from_info(cls, info: DatasetInfo, embeddings: torch.Tensor | None = None) -> ItemFacts:
        """The facts of a dataset (`DatasetInfo`: its tail mask, buckets and categories)."""
        category = None if info.item_category is None else info.item_category.long()
        return cls(tail_mask=info.tail_mask.bool(), bucket=info.item_bucket, category=category,
                   embeddings=embeddings)

    @classmethod
    def from_popularity(cls, item_popularity: torch.Tensor,
                        head_share: float = DEFAULT_HEAD_SHARE,
                        category: torch.Tensor | None = None,
                        embeddings: torch.Tensor | None = None) -> ItemFacts:
        """Facts from training counts alone (head and buckets as `DatasetInfo` decides them)."""
        info = DatasetInfo.from_popularity("items", 0, item_popularity.cpu().numpy(),
                                           head_share, item_category=category)
        return cls.from_info(info, embeddings).to(item_popularity.device)

    @property
    def n_items(self) -> int:
        return len(self.tail_mask)

    def to(self, device: torch.device | str) -> ItemFacts:
        return replace(self, **{name: value.to(device) for name, value in vars(self).items()
                                if isinstance(value, torch.Tensor)})


def history_group_share(history: torch.Tensor, item_group: torch.Tensor,
                        n_groups: int) -> torch.Tensor:
    """(B, n_groups) share of each user's history items in each group.

    Args:
        history: (B, L) item indices; entries outside ``0..n_items-1`` are padding.
        item_group: (n_items,) group index per item.

    Users without history get the uniform distribution.
    """
    valid = (history >= 0) & (history < len(item_group))  # (B, L)
    groups = item_group[history.clamp(0, len(item_group) - 1)]  # (B, L)
    counts = torch.zeros(len(history), n_groups, device=history.device)
    counts.scatter_add_(1, groups, valid.float())
    total = counts.sum(1, keepdim=True)
    uniform = torch.full_like(counts, 1.0 / n_groups)
    return torch.where(total > 0, counts / total.clamp(min=1), uniform)


class Reranker:
    """Greedy re-ranking of a model's top-N candidates into a top-K list.

    Subclasses define the marginal objective of adding a candidate to the list built so far
    (``_start``, ``_objective``, ``_update``). All methods trade relevance against their
    long-tail or diversity term with one ``weight`` λ in [0, 1]: λ = 0 keeps the model's order.

    Relevance is the model score min-max normalised to [0, 1] over each user's valid
    candidates (the sources assume probability-like scores; model scores have arbitrary scale).

    Args:
        weight: λ, the weight of the re-ranking term.
        candidates: how many of the model's top items are re-ranked (N); the output keeps K.
    """

    name: str = "rerank"

    def __init__(self, weight: float = 0.5, candidates: int = 100):
        if not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"rerank.weight must be within [0, 1], got {weight}")
        if int(candidates) < 1:
            raise ValueError(f"rerank.candidates must be a positive integer, got {candidates}")
        self.weight = float(weight)
        self.candidates = int(candidates)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ subclass hooks
    def _start(self, items: torch.Tensor, history: torch.Tensor, facts: ItemFacts) -> Any:
        """Per-batch state for ``_objective`` (e.g. the user's group shares)."""
        return None

    def _objective(self, relevance: torch.Tensor, state: Any) -> torch.Tensor:
        """(B, N) value of appending each candidate to the list built so far."""
        raise NotImplementedError

    def _update(self, state: Any, pick: torch.Tensor) -> None:
        """Record that candidate column ``pick`` (B,) was appended."""

    # ------------------------------------------------------------------ the greedy loop
    def __call__(self, items: torch.Tensor, scores: torch.Tensor, k: int, history: torch.Tensor,
                 facts: ItemFacts) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-rank candidates.

        Args:
            items: (B, N) candidate items, best first by model score.
            scores: (B, N) their model scores; -inf marks an invalid candidate (e.g. seen).
            k: output list length (at most N).
            history: (B, L) each user's input items; out-of-range entries are padding.
            facts: item facts on the same device.

        Returns:
            (B, K) re-ordered items and their (B, K) model scores. The list order is the
            re-ranked order; the scores stay the model's (so a fusion can combine raw scores
            and re-rank its own result), hence they need not decrease along the list.
        """
        check_candidates(items, scores, k)
        valid = torch.isfinite(scores)  # (B, N)
        if self.weight == 0.0:  # the model's own order (candidates arrive sorted)
            return model_order(items, scores, k)
        relevance = _min_max(scores.float(), valid)  # (B, N)
        state = self._start(items, history, facts)
        # invalid candidates come last, in their original order, once the valid ones run out
        last = -1e9 - torch.arange(items.shape[1], device=items.device, dtype=torch.float32)
        taken = torch.zeros_like(valid)
        rows = torch.arange(len(items), device=items.device)
        picks = []
        for _ in range(k):
            objective = self._objective(relevance, state)  # (B, N)
            objective = torch.where(valid, objective, last).masked_fill(taken, -math.inf)
            pick = objective.argmax(1)  # (B,)
            picks.append(pick)
            taken[rows, pick] = True
            self._update(state, pick)
        order = torch.stack(picks, 1)  # (B, K)
        return items.gather(1, order), scores.gather(1, order)


def check_candidates(items: torch.Tensor, scores: torch.Tensor, k: int) -> None:
    """A clear error for candidates a re-ranker cannot take (see `Reranker.__call__`)."""
    if items.shape != scores.shape or items.dim() != 2:
        raise ValueError(f"items {tuple(items.shape)} and scores {tuple(scores.shape)} must "
                         "both be (B, N)")
    if not 1 <= k <= items.shape[1]:
        raise ValueError(f"k={k} must be within 1..{items.shape[1]} (the candidates)")


def model_order(items: torch.Tensor, scores: torch.Tensor, k: int | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` (all: None) candidates in the model's order, best score first; equal
    scores and invalid (-inf) candidates keep their column order."""
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return items.gather(1, order), scores.gather(1, order)


def _min_max(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scores scaled to [0, 1] per row over the valid entries (0 elsewhere)."""
    high = scores.masked_fill(~valid, -math.inf).max(1, keepdim=True).values
    low = scores.masked_fill(~valid, math.inf).min(1, keepdim=True).values
    span = (high - low).clamp(min=1e-12)
    scaled = (scores - low) / span
    scaled = torch.where(torch.isfinite(high - low) & (high > low), scaled,
                         torch.ones_like(scaled))
    return scaled.masked_fill(~valid, 0.0)


def group_onehot(items: torch.Tensor, item_group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(B, N, n_groups) float one-hot of each candidate's group."""
    return torch.nn.functional.one_hot(item_group[items], n_groups).float()


__all__ = ["BUCKETS", "ItemFacts", "Reranker", "check_candidates", "group_onehot",
           "history_group_share", "model_order"]
