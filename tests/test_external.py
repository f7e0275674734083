"""Lists made by another tool scored against a run's test targets (recozoo.report.external)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import compose_config

from recozoo.artifacts import RunDir
from recozoo.report import build_leaderboard
from recozoo.report.external import read_list_file, score_external


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny run (popularity model) inside a sweep-like folder."""
    from recozoo.train import train

    out = tmp_path_factory.mktemp("sweep") / "pop"
    train(compose_config(["model=pop"], out))
    return out


def external_ids(run: Path) -> pd.DataFrame:
    """The run's own test rankings with its external user and item ids."""
    folder = RunDir(run)
    rankings = pd.read_parquet(folder.rankings("test"))
    users = pd.read_parquet(folder.users).set_index("user")["user_id"]
    items = pd.read_parquet(folder.items).set_index("item")["item_id"]
    return pd.DataFrame({"user_id": users[rankings["user"]].to_numpy(),
                         "item_id": items[rankings["item"]].to_numpy(),
                         "rank": rankings["rank"].to_numpy(),
                         "score": rankings["score"].to_numpy()})


def test_the_runs_own_lists_reproduce_its_test_metrics(run, tmp_path):
    path = tmp_path / "own.csv"
    external_ids(run).to_csv(path, index=False)
    out = score_external(path, run, tmp_path / "scored")
    mine, theirs = RunDir(run).read_record(), RunDir(out).read_record()
    keys = [k for k in mine.metrics if k.startswith("test/")]
    assert {"test/poprsp@10", "test/popreo@10", "test/aclt@10", "test/ndcg_heavy_users@10",
            "test/ndcg_light_users@20", "test/recall@10/distant"} <= set(keys)
    for key in ("test/poprsp@10", "test/popreo@10", "test/ndcg_heavy_users@10",
                "test/ndcg_light_users@10"):
        assert mine.metrics[key] is not None and mine.metrics[key] > 0, key  # a real check
    for key in keys:
        expected, found = mine.metrics[key], theirs.metrics[key]
        if expected is None:
            assert found is None, key
        else:
            assert found == pytest.approx(expected, abs=1e-6), key
    assert theirs.model == "own"
    for fact in ("data", "split", "seed", "n_users", "n_items", "head_share"):
        assert getattr(theirs, fact) == getattr(mine, fact), fact
    per_user = pd.read_parquet(RunDir(out).per_user_test)
    original = pd.read_parquet(RunDir(run).per_user_test)
    assert np.allclose(per_user["ndcg@10"], original["ndcg@10"], atol=1e-6)


def test_users_without_a_list_count_with_an_empty_one(run, tmp_path):
    lists = external_ids(run)
    left_out = lists["user_id"].iloc[0]
    path = tmp_path / "partial.tsv"
    lists[lists["user_id"] != left_out].to_csv(path, sep="\t", index=False)
    out = score_external(path, run, tmp_path / "partial", name="partial")
    original = pd.read_parquet(RunDir(run).per_user_test)
    users = pd.read_parquet(RunDir(run).users).set_index("user_id")["user"]
    expected = original["recall@10"].where(original["user"] != users[left_out], 0.0).mean()
    record = RunDir(out).read_record()
    assert record.metrics["test/recall@10"] == pytest.approx(expected, abs=1e-6)
    assert record.extra["external_users_without_list"] == 1


def test_a_leaderboard_ranks_the_external_list_beside_the_run(run):
    out = score_external_into_sweep(run)
    (table,) = build_leaderboard([run.parent], bootstrap_resamples=10).tables
    assert set(table.frame["model"]) == {"pop", "reversed"}
    assert table.frame.iloc[0]["model"] == "pop"  # the reversed lists rank worse
    assert out.parent == run.parent


def score_external_into_sweep(run: Path) -> Path:
    lists = external_ids(run)
    lists["rank"] = lists.groupby("user_id")["rank"].transform("max") + 1 - lists["rank"]
    path = run.parent.parent / "reversed.parquet"
    lists.to_parquet(path)
    return score_external(path, run)


def test_unknown_ids_are_an_error_or_dropped_and_counted(run, tmp_path):
    lists = external_ids(run)
    bad = pd.concat([lists, pd.DataFrame({"user_id": ["nobody"], "item_id": ["nothing"],
                                          "rank": [1], "score": [1.0]})])
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"1 of \d+ rows .* 1 user ids \(e.g. \['nobody'\]"):
        score_external(path, run, tmp_path / "bad")
    out = score_external(path, run, tmp_path / "bad", on_unknown="drop")
    record = RunDir(out).read_record()
    assert record.extra["external_rows_dropped"] == 1
    assert record.metrics["test/ndcg@10"] == pytest.approx(
        RunDir(run).read_record().metrics["test/ndcg@10"], abs=1e-6)


def test_list_files_are_read_by_rank_or_by_score(tmp_path):
    path = tmp_path / "scores.tsv"
    path.write_text("user_id:token\titem_id:token\tscore:float\nu1\ta\t0.2\nu1\tb\t0.9\n"
                    "u2\ta\t0.5\n")
    frame = read_list_file(path)
    assert frame["rank"].tolist() == [2, 1, 1] and frame["user_id"].tolist() == ["u1"] * 2 + ["u2"]
    with pytest.raises(ValueError, match=r"missing \['rank \(or score\)'\]"):
        (tmp_path / "no_rank.csv").write_text("user,item\nu1,a\n")
        read_list_file(tmp_path / "no_rank.csv")
    with pytest.raises(ValueError, match="row 3 holds 'x'"):
        (tmp_path / "bad_rank.csv").write_text("user,item,rank\nu1,a,1\nu1,b,x\n")
        read_list_file(tmp_path / "bad_rank.csv")
    with pytest.raises(ValueError, match="expected a .csv, .tsv or .parquet"):
        read_list_file(tmp_path / "lists.json")
    pd.DataFrame({"user": [7, 7], "item": [3, 4], "rank": [2, 1]}).to_parquet(
        tmp_path / "ranked.parquet")
    frame = read_list_file(tmp_path / "ranked.parquet")
    assert frame["user_id"].tolist() == ["7", "7"] and math.isnan(frame["score"].iloc[0])


def test_the_output_never_overwrites_a_run(run, tmp_path):
    path = tmp_path / "own.csv"
    external_ids(run).to_csv(path, index=False)
    with pytest.raises(ValueError, match="the output folder is the run itself"):
        score_external(path, run, run)
