"""metrics.json recounted from the saved files alone, with NumPy and no recozoo metric code:
the ranked lists, the held-out targets and the item table must tell the same story."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recozoo.train import run


def _recount(out: Path, k: int) -> dict[str, float]:
    rankings = pd.read_parquet(out / "rankings_test.parquet")
    targets = pd.read_parquet(out / "targets_test.parquet")
    tail = pd.read_parquet(out / "items.parquet").set_index("item")["is_tail"]
    wanted = targets.groupby("user")["item"].apply(set)
    recall, ndcg, tail_recall = [], [], []
    for user, listed in rankings.sort_values(["user", "rank"]).groupby("user")["item"]:
        top = listed.to_numpy()[:k]
        relevant = wanted.get(user, set())
        if not relevant:
            continue
        hits = np.array([item in relevant for item in top], dtype=float)
        recall.append(hits.sum() / len(relevant))
        ideal = np.sum(1 / np.log2(np.arange(2, min(len(relevant), k) + 2)))
        ndcg.append(np.sum(hits / np.log2(np.arange(2, len(top) + 2))) / ideal)
        tail_relevant = {i for i in relevant if tail[i]}
        if tail_relevant:
            tail_recall.append(sum(i in tail_relevant for i in top) / len(tail_relevant))
    return {"recall": float(np.mean(recall)), "ndcg": float(np.mean(ndcg)),
            "tail_recall": float(np.mean(tail_recall)) if tail_recall else float("nan")}


@pytest.mark.parametrize("overrides", [["model=ease", "split=random"],
                                       ["model=bpr", "split=loo", "rerank=xquad"]])
def test_metrics_json_matches_a_numpy_recount_of_the_saved_lists(make_config, overrides):
    cfg = make_config(overrides + ["data.source.n_users=300"])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    for k in cfg.eval.ks:
        recount = _recount(out, k)
        assert metrics[f"test/recall@{k}"] == pytest.approx(recount["recall"], abs=1e-5)
        assert metrics[f"test/ndcg@{k}"] == pytest.approx(recount["ndcg"], abs=1e-5)
        assert metrics[f"test/tail_recall@{k}"] == pytest.approx(recount["tail_recall"],
                                                                 abs=1e-5)
    assert metrics["test/recall@10"] > 0  # the recount compared something
