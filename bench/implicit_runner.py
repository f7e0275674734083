"""Train implicit's BPR or ALS on one exported split, early-stopped on validation NDCG@10, and
write its test top-K lists and its seconds.

Run by `bench.implicit_peer` with the interpreter of implicit's own virtual environment (it
imports implicit, numpy and scipy, never recozoo)::

    python implicit_runner.py --split split.npz --model bpr --json-out out.json \
        --lists-out lists.npy

``split.npz`` holds the training pairs (``train_user``, ``train_item``), the validation targets
(``val_user``, ``val_item``), the test users (``test_user``, sorted), the test inputs
(``test_input_user``, ``test_input_item``: training and validation pairs, masked from the test
lists as recozoo masks them) and ``n_users``, ``n_items``, all as recozoo's indices.

One epoch is one of implicit's iterations (one ``fit`` with a callback per iteration). Its
seconds run from the end of the previous iteration's callback (the start of ``fit`` for the
first, so it includes implicit's set-up) to the start of this one: training only, validation
excluded, as recozoo's RunTimer measures. After each epoch the validation users are ranked
(training items masked) and NDCG@10 (binary relevance, ideal DCG over min(targets, 10)) picks the
best epoch; ``patience`` epochs without improvement stop the run, the best factors are kept, and
the test users' lists (training and validation items masked) are written as an
(n_test_users, K) int64 array, -1 in empty slots. The test metrics are not computed here: the
bench scores these lists with recozoo's own metric code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np
import scipy.sparse as sp


class _Stop(Exception):
    """Raised from the epoch callback to end ``fit`` early."""


def pairs_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int
                 ) -> sp.csr_matrix:
    """(n_users, n_items) binary CSR matrix of the given pairs (repeats count once)."""
    matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)),
                           shape=(n_users, n_items))
    matrix.data[:] = 1.0
    matrix.sort_indices()
    return matrix


def ndcg_at_k(lists: np.ndarray, users: np.ndarray, target_user: np.ndarray,
              target_item: np.ndarray, k: int = 10) -> float:
    """Mean binary NDCG@k over ``users`` of ranked ``lists`` (one row per user, -1 = empty).

    Args:
        lists: (n, >=k) ranked item indices, row i for ``users[i]``.
        users: (n,) the user of each row; users without a target are skipped.
        target_user, target_item: the held-out (user, item) pairs.
    """
    row_of = {int(u): i for i, u in enumerate(users)}
    targets: dict[int, set[int]] = {}
    for u, i in zip(target_user.tolist(), target_item.tolist()):
        if u in row_of:
            targets.setdefault(u, set()).add(i)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for u, relevant in targets.items():
        top = lists[row_of[u], :k]
        gains = np.array([item in relevant for item in top.tolist()], dtype=np.float64)
        ideal = discount[:min(len(relevant), k)].sum()
        values.append(float(gains @ discount[:len(gains)]) / ideal)
    return float(np.mean(values)) if values else 0.0


def top_k(model: Any, users: np.ndarray, masked: sp.csr_matrix, k: int,
          batch_size: int = 4096) -> np.ndarray:
    """(len(users), k) best items of ``users``, the items in their ``masked`` rows excluded."""
    out = np.full((len(users), k), -1, dtype=np.int64)
    for start in range(0, len(users), batch_size):
        block = users[start:start + batch_size]
        ids, _ = model.recommend(block, masked[block], N=k, filter_already_liked_items=True)
        out[start:start + len(block), :ids.shape[1]] = ids
    return out


def build(name: str, factors: int, threads: int, seed: int, max_epochs: int) -> Any:
    """implicit's CPU model ``name`` (bpr or als) with its defaults except ``factors``."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    if name == "bpr":
        return BayesianPersonalizedRanking(factors=factors, iterations=max_epochs,
                                           num_threads=threads, random_state=seed)
    if name == "als":
        return AlternatingLeastSquares(factors=factors, iterations=max_epochs,
                                       num_threads=threads, random_state=seed)
    raise ValueError(f"--model: expected bpr or als, got {name!r}")


def train(name: str, split: dict[str, np.ndarray], factors: int, threads: int, seed: int,
          max_epochs: int, patience: int, k: int) -> tuple[dict[str, Any], np.ndarray]:
    """Train with early stopping; the figures and the test lists (see the module docstring)."""
    n_users, n_items = int(split["n_users"]), int(split["n_items"])
    train_matrix = pairs_matrix(split["train_user"], split["train_item"], n_users, n_items)
    test_inputs = pairs_matrix(split["test_input_user"], split["test_input_item"], n_users,
                               n_items)
    val_users = np.unique(split["val_user"])
    model = build(name, factors, threads, seed, max_epochs)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"ndcg": -1.0, "epoch": -1, "factors": None}
    clock = {"start": time.perf_counter()}

    def on_epoch(epoch: int, *_: Any) -> None:
        seconds = time.perf_counter() - clock["start"]
        lists = top_k(model, val_users, train_matrix, 10)
        ndcg = ndcg_at_k(lists, val_users, split["val_user"], split["val_item"], 10)
        history.append({"epoch": epoch, "seconds": round(seconds, 5), "val_ndcg@10": ndcg})
        if ndcg > best["ndcg"]:
            best.update(ndcg=ndcg, epoch=epoch,
                        factors=(model.user_factors.copy(), model.item_factors.copy()))
        if epoch - best["epoch"] >= patience:
            raise _Stop
        clock["start"] = time.perf_counter()

    start = time.perf_counter()
    stopped_by = "max_epochs"
    try:
        model.fit(train_matrix, show_progress=False, callback=on_epoch)
    except _Stop:
        stopped_by = "early_stopping"
    wall = time.perf_counter() - start
    model.user_factors, model.item_factors = best["factors"]
    eval_start = time.perf_counter()
    lists = top_k(model, split["test_user"], test_inputs, k)
    eval_seconds = time.perf_counter() - eval_start
    epoch_seconds = [h["seconds"] for h in history]
    figures = {
        "model": name, "factors": factors, "threads": threads, "seed": seed,
        "epochs": len(history), "best_epoch": best["epoch"] + 1, "stopped_by": stopped_by,
        "best_val_ndcg@10": best["ndcg"], "sec_per_epoch": float(np.median(epoch_seconds)),
        "seconds_to_best": float(sum(epoch_seconds[:best["epoch"] + 1])),
        "train_seconds": float(sum(epoch_seconds)), "wall_seconds": round(wall, 3),
        "eval_seconds": round(eval_seconds, 4), "history": history,
        "hyperparameters": {key: getattr(model, key) for key in
                            ("learning_rate", "regularization", "alpha")
                            if hasattr(model, key)},
    }
    return figures, lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", required=True)
    parser.add_argument("--model", required=True, choices=["bpr", "als"])
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--json-out", required=True)
    parser.add_argument("--lists-out", required=True)
    args = parser.parse_args()
    import implicit
    with np.load(args.split) as data:
        split = {key: data[key] for key in data.files}
    figures, lists = train(args.model, split, args.factors, args.threads, args.seed,
                           args.max_epochs, args.patience, args.k)
    np.save(args.lists_out, lists)
    with open(args.json_out, "w") as handle:
        json.dump({"implicit": implicit.__version__, "numpy": np.__version__,
                   "python": platform.python_version(), **figures}, handle)


if __name__ == "__main__":
    main()
