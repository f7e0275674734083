"""The machine's limit for full-ranking evaluation: a plain matmul plus top-K of the same shape.

Scoring every item for every user with a factor model is ``(users, d) @ (d, items)`` followed by
a top-K per user: ``2 * users * items * d`` floating-point operations. Timing that bare kernel
(batched by users as the evaluation loop does) gives the ceiling that recozoo's evaluation,
which also masks seen items and computes the metric suite, is measured against. The top-K is the
one recozoo ranks with (`recozoo.top_k.top_k`, 1.4-3x faster than `torch.topk` on a CPU at the
shops' catalogues), and the product is written into reused memory as recozoo's factor models do
(`recozoo.data.contracts.EvalBatch.dot_scores`), so the ceiling is the fastest kernel known here,
not a slower one.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from recozoo.data.contracts import EVAL_SCORES_PER_BATCH
from recozoo.top_k import top_k


def scoring_flops(n_users: int, n_items: int, dim: int) -> float:
    """Floating-point operations of scoring every item for every user (one multiply-add = 2)."""
    return 2.0 * n_users * n_items * dim


def matmul_topk(n_users: int, n_items: int, dim: int, batch_size: int | None = None,
                k: int = 100, threads: int | None = None, repeats: int = 3, seed: int = 0,
                ) -> dict[str, Any]:
    """Time ``users @ items.T`` plus its top k (`top_k`) over all users in batches of ``batch_size``
    (None: the evaluation's automatic batch, `EVAL_SCORES_PER_BATCH` scores).

    Returns the best of ``repeats`` passes: ``seconds``, ``gflops`` (scoring FLOPs per second,
    in 1e9) and the shape.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(seed)
    users = torch.randn(n_users, dim, generator=generator)
    items = torch.randn(n_items, dim, generator=generator)
    k = min(k, n_items)
    if batch_size is None:
        batch_size = max(1, EVAL_SCORES_PER_BATCH // n_items)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            memory = torch.empty(min(batch_size, n_users), n_items)  # reused, as `Ranker` does
            for first in range(0, n_users, batch_size):
                rows = users[first:first + batch_size]
                out = memory if len(rows) == len(memory) else None
                top_k(torch.mm(rows, items.T, out=out), k)  # (B, n_items)
            best = min(best, time.perf_counter() - start)
    flops = scoring_flops(n_users, n_items, dim)
    return {"n_users": n_users, "n_items": n_items, "dim": dim, "batch_size": batch_size, "k": k,
            "threads": torch.get_num_threads(), "seconds": round(best, 4),
            "gflops": flops / best / 1e9}  # unrounded: a tiny shape on a busy machine rounds to 0


def achieved(n_users: int, n_items: int, dim: int, eval_seconds: float | None
             ) -> float | None:
    """GFLOP/s a full evaluation of ``eval_seconds`` achieved on the scoring matmul."""
    if not eval_seconds:
        return None
    return round(scoring_flops(n_users, n_items, dim) / eval_seconds / 1e9, 2)
