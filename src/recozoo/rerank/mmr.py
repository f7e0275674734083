"""Maximal marginal relevance.

Carbonell and Goldstein, "The Use of MMR, Diversity-Based Reranking for Reordering Documents
and Producing Summaries", SIGIR 1998. A candidate is appended by

    (1 - λ) s(i) - λ max_{j ∈ S} sim(i, j)

with sim the cosine of item embeddings (the model's item vectors) or 1 for items of the same
category and 0 otherwise.
"""

from __future__ import annotations

from typing import Literal

import torch

from recozoo.rerank.base import ItemFacts, Reranker


class MMR(Reranker):
    """Maximal marginal relevance (Carbonell and Goldstein, SIGIR 1998).

    Args:
        weight: λ in [0, 1], the weight of the redundancy penalty.
        candidates: model top-N re-ranked.
        similarity: ``embedding`` (cosine of ``facts.embeddings``), ``category``, or ``auto``
            (embeddings when the model has them, else categories; an error when neither).
    """

    name = "mmr"

    def __init__(self, weight: float = 0.3, candidates: int = 100,
                 similarity: Literal["auto", "embedding", "category"] = "auto"):
        super().__init__(weight, candidates)
        if similarity not in ("auto", "embedding", "category"):
            raise ValueError("rerank.similarity must be 'auto', 'embedding' or 'category', "
                             f"got {similarity!r}")
        self.similarity = similarity

    def _start(self, items: torch.Tensor, history: torch.Tensor, facts: ItemFacts) -> dict:
        use = self.similarity
        if use == "auto":
            use = "embedding" if facts.embeddings is not None else "category"
        state = {"redundancy": torch.zeros(items.shape, device=items.device),  # (B, N)
                 "rows": torch.arange(len(items), device=items.device)}
        if use == "embedding":
            if facts.embeddings is None:
                raise ValueError("rerank=mmr with rerank.similarity=embedding needs item "
                                 "embeddings, and this model exposes none (item_embeddings() is "
                                 "None); use rerank.similarity=category")
            vectors = facts.embeddings.detach().float()[items]  # (B, N, d)
            state["vectors"] = torch.nn.functional.normalize(vectors, dim=-1)
        elif facts.category is None:
            raise ValueError("rerank=mmr needs item embeddings or categories: this model has no "
                             "item_embeddings() and the dataset has no item categories")
        else:
            state["category"] = facts.category.long()[items]  # (B, N)
        return state

    def _objective(self, relevance: torch.Tensor, state: dict) -> torch.Tensor:
        return (1.0 - self.weight) * relevance - self.weight * state["redundancy"]

    def _update(self, state: dict, pick: torch.Tensor) -> None:
        if "vectors" in state:
            vectors = state["vectors"]
            chosen = vectors[state["rows"], pick]  # (B, d)
            similarity = torch.einsum("bnd,bd->bn", vectors, chosen)  # (B, N)
        else:
            category = state["category"]
            chosen = category[state["rows"], pick]  # (B,)
            similarity = (category == chosen[:, None]).float()  # (B, N)
        state["redundancy"] = torch.maximum(state["redundancy"], similarity)
