"""Batch export: every user's top-K in one Parquet file, the same lists as the service."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import compose_config
from recozoo.recommend import export_recommendations, main
from recozoo.serve.engine import Engine
from recozoo.train import run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "ease"
    # a fixed L2 weight (150): head-heavy lists, which tail_boost moves toward the tail. xQuAD is
    # personalised: it balances a list toward the user's own head/tail share, so a list already
    # tail-heavier than the user's history (the weight validation picks on this tiny shop, 25)
    # would move the other way
    run(compose_config(["model=ease", "model.reg_grid=null"], folder))
    return folder


def test_export_writes_every_users_unseen_top_k(run_dir, tmp_path):
    out = tmp_path / "recs" / "recs.parquet"
    stats = main([f"run={run_dir}", f"out={out}", "k=5", "batch_size=16", "progress=false"])
    recs = pd.read_parquet(out)
    engine = Engine.load(run_dir)
    catalog = engine.catalog
    assert stats["users"] == catalog.n_users and stats["rows"] == len(recs) == 5 * catalog.n_users
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score"]
    assert set(recs["user_id"]) == set(catalog.user_ids)
    for user_id, group in recs.groupby("user_id"):
        assert group["rank"].tolist() == [1, 2, 3, 4, 5]
        assert group["score"].is_monotonic_decreasing
        seen = set(catalog.item_ids[catalog.user_history(catalog.user_index[user_id])])
        assert not seen & set(group["item_id"])
    # the same lists as the service gives, batch boundaries (16 users) notwithstanding
    for user_id in (catalog.user_ids[0], catalog.user_ids[17], catalog.user_ids[-1]):
        (answer,) = engine.recommend([engine.parse({"user_id": str(user_id), "k": 5})])
        assert recs[recs["user_id"] == user_id]["item_id"].tolist() == [
            item["item_id"] for item in answer["items"]]
    assert [p.name for p in out.parent.iterdir()] == ["recs.parquet"]  # no temporary left


@pytest.mark.parametrize("lever", [{"tail_boost": 0.8}, {"tail_slots": 0.5}])
def test_export_with_a_tail_lever_lists_more_tail_items(run_dir, tmp_path, lever):
    engine = Engine.load(run_dir)
    plain, boosted = tmp_path / "plain.parquet", tmp_path / "boosted.parquet"
    export_recommendations(engine, plain, k=10, progress=False)
    export_recommendations(engine, boosted, k=10, progress=False, **lever)
    tail = dict(zip(engine.catalog.item_ids, engine.catalog.is_tail))
    share = [pd.read_parquet(p)["item_id"].map(tail).mean() for p in (plain, boosted)]
    assert share[1] > share[0]
    if "tail_slots" in lever:  # 5 of every 10 places: at least half of each list is tail
        per_user = pd.read_parquet(boosted).assign(tail=lambda f: f["item_id"].map(tail))
        assert (per_user.groupby("user_id")["tail"].sum() >= 5).all()


@pytest.mark.parametrize("args, message", [
    (["k=0"], "k must be within 1..80"),
    (["k=500"], "k must be within 1..80"),
    (["colour=red"], "colour"),
    (["k"], "key=value"),
    (["tail_boost=0.3", "tail_slots=0.2"], "not both"),
    (["tail_slots=1.5"], "tail_slots must be within"),
])
def test_bad_arguments_are_explained(run_dir, tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        main([f"run={run_dir}", f"out={tmp_path / 'x.parquet'}", "progress=false", *args])
    assert not (tmp_path / "x.parquet").exists()


def test_missing_run_and_missing_out(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main([f"run={tmp_path / 'none'}", f"out={tmp_path / 'x.parquet'}"])
    with pytest.raises(SystemExit, match="out=..."):
        main([f"run={tmp_path}"])
    assert np.array_equal(sorted(p.name for p in tmp_path.iterdir()), [])


def test_a_short_list_is_the_start_of_a_longer_one_where_scores_tie(tmp_path):
    """Popularity scores tie often (on the tiny shop in every list); equal scores are taken in
    item order (`recozoo.top_k`), so a top 5 is the first 5 of the same user's top 50, as a
    served list is the start of the evaluated top 100 (`torch.topk`'s choice among equal scores
    depended on k)."""
    folder = tmp_path / "pop"
    run(compose_config(["model=pop"], folder))
    engine = Engine.load(folder)
    short, long = tmp_path / "short.parquet", tmp_path / "long.parquet"
    export_recommendations(engine, short, k=5, progress=False)
    export_recommendations(engine, long, k=50, progress=False)
    short, long = pd.read_parquet(short), pd.read_parquet(long)
    assert (long.groupby("user_id")["score"].nunique() < 50).all()  # ties in every list
    start = long[long["rank"] <= 5].reset_index(drop=True)
    pd.testing.assert_frame_equal(short, start)
