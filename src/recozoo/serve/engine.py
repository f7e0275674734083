"""`Engine`: validated recommendation requests in, ranked items with ids, titles and scores out.

The one place where a request becomes a ranked list: the HTTP service (`recozoo.serve.service`),
the batch export (`recozoo.recommend`) and the load test all go through it.

How a request is scored (the ``strategy`` in each answer):

* ``user``: the user id is known to the run: the model scores the user, with the user's known
  interactions (plus any ``history`` sent along, appended as the newest) as its input.
* ``history``: the user is unknown or not given, a ``history`` of known item ids is given, and
  the model scores from histories alone (``Recommender.scores_new_users``: EASE, ItemKNN, pop
  ...): the model scores the history as a new user's input.
* ``popularity`` (a fallback, explained in the answer's ``fallback`` field): the user is unknown
  and no history is given, or the model needs a known user (it has user embeddings, e.g. BPR) and
  cannot score a history: items are ranked by their training popularity.

Options: ``exclude_seen`` (default true) removes the input items from the list; ``category``
keeps items of one category (where the data has categories); ``tail_boost`` λ in [0, 1]
re-ranks the model's top candidates with personalised xQuAD (Abdollahpouri et al.,
"Managing Popularity Bias in Recommendation Methods with Personalized Re-Ranking", FLAIRS 2019):
the list's head/tail mix moves toward the user's own, which is toward the tail where, as with
most models, the list is head-heavier than the user's history; 0 keeps the model's order.
``tail_slots`` λ in [0, 1] instead gives that share of the list's places to the best tail items
below the model's top (`recozoo.rerank.TailSlots`); a request sets one of the two.

Bad requests raise `RequestError` (HTTP 422) listing what is wrong: unknown item ids in the
history, ``k`` outside 1..n_items, an unknown category.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recozoo.data.datamodule import EvalBatch
from recozoo.evaluation import mask_seen
from recozoo.rerank import Reranker, TailSlots, XQuAD
from recozoo.serve.loading import LoadedRun, load_run
from recozoo.serve.schema import RecommendRequest, RequestError, Strategy

#: at most this many offending values are echoed back in an error
MAX_LISTED = 50
#: the model's top candidates that ``tail_boost`` and ``tail_slots`` re-rank
TAIL_BOOST_CANDIDATES = 100


def tail_reranker(tail_boost: float, tail_slots: float, k: int) -> Reranker | None:
    """The re-ranker a request asks for in place of the run's: xQuAD at ``tail_boost``, tail
    slots at ``tail_slots`` (at most one of them above 0), or None (the run's own)."""
    if tail_boost > 0 and tail_slots > 0:
        raise ValueError("give tail_boost (xQuAD) or tail_slots, not both")
    candidates = max(TAIL_BOOST_CANDIDATES, k)
    if tail_boost > 0:
        return XQuAD(weight=tail_boost, candidates=candidates)
    if tail_slots > 0:
        return TailSlots(weight=tail_slots, candidates=candidates)
    return None


@dataclass
class Query:
    """A validated request in index space."""

    user_id: str | None
    user: int | None  # index of a known user
    inputs: np.ndarray  # the model's input items, oldest first
    strategy: Strategy
    fallback: str | None
    k: int
    exclude_seen: bool = True
    tail_boost: float = 0.0
    category: str | None = None
    tail_slots: float = 0.0


def _listed(values: list[str]) -> str:
    shown = ", ".join(repr(v) for v in values[:MAX_LISTED])
    return shown + (f" ... ({len(values)} in all)" if len(values) > MAX_LISTED else "")


# ---------------------------------------------------------------------------------- engine
class Engine:
    """Ranks items for requests with a loaded run (a model or a fusion).

    Example:
        >>> engine = Engine.load("logs/runs/ease")
        >>> engine.recommend([engine.parse({"history": ["i1", "i7"], "k": 5})])
    """

    def __init__(self, run: LoadedRun, device: str | torch.device = "cpu"):
        self.run = run
        self.catalog = run.catalog
        self.scorer = run.scorer
        self.device = torch.device(device)
        self.popularity = self.catalog.popularity.to(self.device)

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> Engine:
        return cls(load_run(path, device), device)

    @property
    def n_items(self) -> int:
        return self.catalog.n_items

    # ------------------------------------------------------------------ validation
    def parse(self, request: RecommendRequest | dict[str, Any]) -> Query:
        """Check a request against the run's catalogue; raises `RequestError` (422)."""
        if not isinstance(request, RecommendRequest):
            request = RecommendRequest.model_validate(request)
        catalog, errors = self.catalog, []
        if not 1 <= request.k <= catalog.n_items:
            errors.append({"loc": ["body", "k"], "type": "value_error",
                           "msg": f"k must be within 1..{catalog.n_items} (the number of items), "
                                  f"got {request.k}"})
        given = np.empty(0, dtype=np.int64)
        if request.history is not None:
            unknown = [i for i in request.history if i not in catalog.item_index]
            if unknown:
                errors.append({"loc": ["body", "history"], "type": "unknown_items",
                               "msg": f"unknown item ids: {_listed(unknown)}",
                               "unknown_items": unknown[:MAX_LISTED]})
            else:
                given = np.array([catalog.item_index[i] for i in request.history], dtype=np.int64)
        if request.category is not None:
            if catalog.categories is None:
                errors.append({"loc": ["body", "category"], "type": "value_error",
                               "msg": "this run's data has no item categories"})
            elif request.category not in catalog.categories:
                errors.append({"loc": ["body", "category"], "type": "value_error",
                               "msg": f"unknown category {request.category!r}; known: "
                                      f"{_listed(catalog.categories)}"})
        if request.user_id is None and request.history is None:
            errors.append({"loc": ["body"], "type": "value_error",
                           "msg": "give a user_id, a history (item ids), or both"})
        if request.tail_boost > 0 and request.tail_slots > 0:
            errors.append({"loc": ["body", "tail_slots"], "type": "value_error",
                           "msg": "give tail_boost (xQuAD) or tail_slots, not both"})
        if errors:
            raise RequestError(errors)

        user = catalog.user_index.get(request.user_id) if request.user_id is not None else None
        fallback = None
        if user is not None:
            strategy: Strategy = "user"
            inputs = np.r_[catalog.user_history(user), given]
        else:
            inputs = given
            unknown_user = (f"user {request.user_id!r} is unknown to the model"
                            if request.user_id is not None else None)
            if len(given) and self.scorer.scores_new_users:
                strategy = "history"
                fallback = f"{unknown_user}: scored from the given history" if unknown_user \
                    else None
            elif len(given):
                strategy = "popularity"
                fallback = (f"{unknown_user + '; ' if unknown_user else ''}{self.scorer.name} "
                            "scores known users only (user embeddings), not a history: ranked "
                            "by training popularity")
            else:
                strategy = "popularity"
                fallback = (f"{unknown_user} and no history was given"
                            if unknown_user else "the history is empty") + \
                    ": ranked by training popularity"
        return Query(user_id=request.user_id, user=user, inputs=inputs, strategy=strategy,
                     fallback=fallback, k=request.k, exclude_seen=request.exclude_seen,
                     tail_boost=request.tail_boost, category=request.category,
                     tail_slots=request.tail_slots)

    def query_for_user(self, user: int, k: int, exclude_seen: bool = True,
                       tail_boost: float = 0.0, tail_slots: float = 0.0) -> Query:
        """The query of a known user index (the batch export's path)."""
        return Query(user_id=str(self.catalog.user_ids[user]), user=user,
                     inputs=self.catalog.user_history(user), strategy="user", fallback=None,
                     k=k, exclude_seen=exclude_seen, tail_boost=tail_boost,
                     tail_slots=tail_slots)

    # ------------------------------------------------------------------ ranking
    def eval_batch(self, queries: list[Query]) -> EvalBatch:
        """The `EvalBatch` of queries scored by the model; new users get the index n_users,
        which no user table has, so a model that wrongly reads it fails loudly."""
        history_len = self.scorer.history_len
        pad = self.n_items
        history = np.full((len(queries), history_len), pad, dtype=np.int64)
        for row, query in enumerate(queries):
            recent = query.inputs[-history_len:]
            if len(recent):
                history[row, history_len - len(recent):] = recent
        lengths = np.array([len(q.inputs) for q in queries], dtype=np.int64)
        seen_cols = (np.concatenate([q.inputs for q in queries]) if lengths.sum()
                     else np.empty(0, dtype=np.int64))
        users = [q.user if q.user is not None else self.catalog.n_users for q in queries]
        empty = torch.empty(0, dtype=torch.long, device=self.device)
        return EvalBatch(
            user=torch.as_tensor(users, dtype=torch.long, device=self.device),
            history=torch.as_tensor(history, device=self.device),
            seen_rows=torch.as_tensor(np.repeat(np.arange(len(queries)), lengths),
                                      device=self.device),
            seen_cols=torch.as_tensor(seen_cols, device=self.device),
            target_rows=empty, target_cols=empty,
        )

    def scores(self, queries: list[Query]) -> torch.Tensor:
        """(B, n_items) ranking scores: the model's (or popularity for fallback rows), with
        excluded and filtered-out items at -inf."""
        scores = self.popularity.expand(len(queries), -1).clone()  # (B, n_items)
        model_rows = [row for row, q in enumerate(queries) if q.strategy != "popularity"]
        if model_rows:
            batch = self.eval_batch([queries[row] for row in model_rows])
            scores[model_rows] = self.scorer.ranker.scores(batch, mask_inputs=False).to(
                self.device, torch.float32)
        excluded = [row for row, q in enumerate(queries) if q.exclude_seen and len(q.inputs)]
        if excluded:
            lengths = [len(queries[row].inputs) for row in excluded]
            rows = torch.as_tensor(np.repeat(excluded, lengths), device=self.device)
            cols = torch.as_tensor(np.concatenate([queries[row].inputs for row in excluded]),
                                   device=self.device)
            mask_seen(scores, rows, cols)
        for category in {q.category for q in queries if q.category is not None}:
            rows = [row for row, q in enumerate(queries) if q.category == category]
            outside = ~self.catalog.category_mask(category).to(self.device)  # (n_items,)
            scores[rows] = scores[rows].masked_fill(outside, -math.inf)
        return scores

    @torch.inference_mode()
    def rank(self, queries: list[Query]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(items, scores) best first for each query; at most ``k`` items, fewer where the
        exclusions and the category filter leave fewer.

        Lists come from the run's `Ranker`, with the run's re-ranker (``rerank=``): a user
        scored with the inputs of an evaluation gets the evaluated list. ``tail_boost`` > 0
        re-ranks with xQuAD at that weight instead of the run's re-ranker, ``tail_slots`` > 0
        with tail slots (`tail_reranker`)."""
        if not queries:
            return []
        scores = self.scores(queries)  # (B, n_items)
        history = self.eval_batch(queries).history  # (B, L)
        ranker = self.scorer.ranker
        out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(queries)  # type: ignore[list-item]
        for asked in sorted({(q.tail_boost, q.tail_slots) for q in queries}):
            rows = [row for row, q in enumerate(queries)
                    if (q.tail_boost, q.tail_slots) == asked]
            k = max(queries[row].k for row in rows)
            reranker = tail_reranker(*asked, k)
            items, values = ranker.top(scores[rows], history[rows], k, reranker=reranker)
            items, values = items.cpu().numpy(), values.cpu().numpy()
            for position, row in enumerate(rows):
                keep = np.isfinite(values[position, :queries[row].k])
                out[row] = (items[position, :queries[row].k][keep],
                            values[position, :queries[row].k][keep])
        return out

    def recommend(self, queries: list[Query]) -> list[dict[str, Any]]:
        """Answers (`RecommendResponse` as dicts) for validated queries, scored in one batch."""
        catalog = self.catalog
        answers = []
        for query, (items, scores) in zip(queries, self.rank(queries)):
            listed = []
            for item, score in zip(items.tolist(), scores.tolist()):
                entry = {"item_id": catalog.item_ids[item], "score": score,
                         "is_tail": bool(catalog.is_tail[item])}
                if catalog.titles is not None:
                    entry["title"] = catalog.titles[item]
                if catalog.item_category_name is not None:
                    entry["category"] = catalog.item_category_name[item]
                listed.append(entry)
            answers.append({"user_id": query.user_id, "model": self.scorer.name,
                            "strategy": query.strategy, "fallback": query.fallback,
                            "items": listed})
        return answers
