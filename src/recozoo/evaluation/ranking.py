"""Ranking: from a model's scores to the ranked lists that are evaluated, exported and served.

One path for everything that ranks (`Evaluator`, ``python -m recozoo.recommend``, the HTTP
service): the model scores every item (`Recommender.score`), the user's input items are set to
-inf (`mask_seen`), the top of the catalogue is taken, and the run's re-ranker (``rerank=``), if
any, re-orders its candidates. So a served list is the evaluated list, for every model and every
re-ranker.
"""

from __future__ import annotations

import math
import threading

import torch

from recozoo.data.datamodule import DatasetInfo, EvalBatch
from recozoo.rerank import ItemFacts, Reranker
from recozoo.top_k import top_k


def mask_seen(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``scores`` (B, n_items) with the (row, item) pairs ``rows``/``cols`` set to -inf, in
    place; returns ``scores``. The one home of seen-item masking."""
    scores[rows, cols] = -math.inf
    return scores


def _shares_memory(scores: torch.Tensor, model: object) -> bool:
    """Whether ``scores`` is a view or shares memory with one of ``model``'s parameters or
    buffers (pop returns its popularity row expanded): masking in place would write into it.
    A freshly computed score matrix, the usual case, is masked without a copy (a copy of a
    (B, n_items) matrix cost a sixth of a 10^6-interaction evaluation)."""
    if scores._base is not None:
        return True
    pointer = scores.untyped_storage().data_ptr()
    tensors = ([*model.parameters(), *model.buffers()] if isinstance(model, torch.nn.Module)
               else [])
    return any(t.untyped_storage().data_ptr() == pointer for t in tensors)


class Ranker:
    """Ranks items for batches of users with one model and, optionally, a re-ranker.

    Args:
        model: anything with ``score(batch) -> (B, n_items)`` (a `Recommender`).
        info: the dataset facts the model was built with (tail mask, buckets, categories).
        top_n: length of the ranked lists (the run's ``eval.top_n``).
        reranker: the run's re-ranker (``rerank=``), or None.

    Example:
        >>> ranker = Ranker(model, dm.info, top_n=100, reranker=XQuAD(weight=0.3))
        >>> items, scores = ranker.rank(batch)  # (B, 100) each, best first
    """

    def __init__(self, model: torch.nn.Module, info: DatasetInfo, top_n: int = 100,
                 reranker: Reranker | None = None):
        self.model = model
        self.info = info
        self.n_items = int(info.n_items)
        self.top_n = min(int(top_n), self.n_items)
        if self.top_n < 1:
            raise ValueError(f"eval.top_n must be a positive integer, got {top_n}")
        self.reranker = reranker
        self._facts: ItemFacts | None = None
        self._thread = threading.local()  # each thread's score memory (`_scores_memory`)

    def scores(self, batch: EvalBatch, mask_inputs: bool = True) -> torch.Tensor:
        """(B, n_items) float32 scores, the batch's input items at -inf when ``mask_inputs``.

        Scoring runs outside mixed-precision autocast: in bf16 many of a catalogue's scores tie,
        and the ranking would depend on the training precision.

        Models may write their scores into memory this ranker keeps for the calling thread
        (`EvalBatch.scores_out`: `EvalBatch.dot_scores`, `same_scores`, `seen_sum` of sparse
        weights), so the matrix is valid until this thread's next call: rank or copy it before
        scoring again."""
        device = batch.user.device
        batch.scores_out = self._scores_memory(len(batch), device)
        try:
            with torch.autocast(device.type, enabled=False):
                scores = self.model.score(batch).float()
        finally:
            batch.scores_out = None
        if scores.shape != (len(batch), self.n_items):
            raise RuntimeError(f"{type(self.model).__name__}.score returned "
                               f"{tuple(scores.shape)}, expected ({len(batch)}, {self.n_items})")
        if mask_inputs and _shares_memory(scores, self.model):
            scores = scores.clone()  # masking writes in place: never into the model (pop)
        if mask_inputs:
            mask_seen(scores, batch.seen_rows, batch.seen_cols)
        return scores

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_thread"] = None  # a copy (or another process) has its own score memory
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread = threading.local()

    def _scores_memory(self, n_rows: int, device: torch.device) -> torch.Tensor:
        """(n_rows, n_items) float32 memory of the calling thread, reused while the batches
        keep their size. A fresh score matrix cost the kernel a page fault per 4 KB written: on
        the 10^6 shop (46,600 items) bpr's test stage took 6.57-6.65 s with reused memory against
        8.36-8.48 s, a validation of 20,000 users 1.74-1.79 s against 2.41-2.44 (2 alternating
        runs)."""
        memory = getattr(self._thread, "scores", None)
        if memory is None or memory.shape[0] != n_rows or memory.device != device:
            memory = torch.empty(n_rows, self.n_items, device=device)
            self._thread.scores = memory
        return memory

    def free_scores_memory(self) -> None:
        """Let go of the calling thread's score memory (`_scores_memory`), e.g. at the end of an
        evaluation stage, so that it is not held through the training epochs between
        validations; the next call of `scores` allocates it again."""
        self._thread.scores = None

    def item_facts(self, device: torch.device) -> ItemFacts:
        """What the re-ranker knows about items; the model's item vectors are read afresh
        (they change while it trains)."""
        if self._facts is None or self._facts.tail_mask.device != device:
            self._facts = ItemFacts.from_info(self.info).to(device)
        item_embeddings = getattr(self.model, "item_embeddings", None)
        vectors = item_embeddings() if callable(item_embeddings) else None
        return ItemFacts(self._facts.tail_mask, self._facts.bucket, self._facts.category,
                         vectors)

    def top(self, scores: torch.Tensor, history: torch.Tensor, k: int | None = None,
            reranker: Reranker | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k) items and their scores, best first, from masked ``scores`` (B, n_items).

        Without a re-ranker: the top k. With one (``reranker``, else the run's): its greedy
        re-ordering of the top ``max(candidates, top_n, k)`` items. A greedy list does not
        depend on its length, so the first k items equal the first k of the evaluated top-N.
        """
        k = self.top_n if k is None else min(int(k), self.n_items)
        reranker = reranker if reranker is not None else self.reranker
        if reranker is None:
            top = top_k(scores, k)  # (B, k)
            return top.indices, top.values
        n = min(max(reranker.candidates, self.top_n, k), self.n_items)
        top = top_k(scores, n)  # (B, N)
        return reranker(top.indices, top.values, k, history, self.item_facts(scores.device))

    def rank(self, batch: EvalBatch, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k) items and scores of a batch, best first (what evaluation scores); k: top_n
        when None."""
        return self.top(self.scores(batch), batch.history, k)
