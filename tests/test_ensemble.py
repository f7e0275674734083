"""Fusion on hand-made run folders whose fused answer is known (no training).

Two members each put the held-out item first for half of the users and second for the other
half (the other half for the other member): alone each has NDCG@10 = (1 + 1/log2(3)) / 2, fused
the target is first for everyone (NDCG@10 = 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recozoo.ensemble import FusionSpec, fuse_sweep
from recozoo.ensemble.__main__ import main as ensemble_main
from recozoo.ensemble.fusion import _fill_short_lists
from recozoo.provenance import code_version
from recozoo.report import build_leaderboard

N_USERS, N_ITEMS, LIST = 40, 60, 10
ALONE = (1 + 1 / math.log2(3)) / 2


def target(user: int, stage: str) -> int:
    return (6 if stage == "val" else 18) + user % 12  # tail items (head: the 12 most popular)


def ranked_list(user: int, stage: str, first: bool, decoys: range) -> list[int]:
    """The target at rank 1 (``first``) or 2, decoys from the member's own pool elsewhere."""
    pool = list(decoys)[:LIST - 1]
    return [target(user, stage)] + pool if first else pool[:1] + [target(user, stage)] + pool[1:]


def write_member(folder: Path, model: str, first: dict[str, callable], decoys: range,
                 present: dict[str, bool] | None = None, rerank: str = "none",
                 seed: int = 1) -> Path:
    """A run folder with rankings for both stages; ``first[stage](user)`` says where the target
    goes; ``present[stage]`` False (or a function of the user that says False) leaves the target
    out of the list. A ``rerank`` other than
    "none" writes what a re-ranked run saves: the model's scores in the re-ranked order, here
    rising down the list (the re-ranker promoted the items the model scored lowest)."""
    folder.mkdir(parents=True)
    for stage in ("val", "test"):
        rows = []
        for user in range(N_USERS):
            items = ranked_list(user, stage, first[stage](user), decoys)
            shown = present[stage] if present is not None else True
            if not (shown(user) if callable(shown) else shown):
                items = list(decoys)[:LIST]
            rows += [(user, rank, item, float(rank if rerank != "none" else LIST - rank))
                     for rank, item in enumerate(items, start=1)]
        pd.DataFrame(rows, columns=["user", "rank", "item", "score"]).to_parquet(
            folder / f"rankings_{stage}.parquet")
        pd.DataFrame({"user": np.arange(N_USERS),
                      "item": [target(u, stage) for u in range(N_USERS)]}).to_parquet(
            folder / f"targets_{stage}.parquet")
    popularity = np.arange(N_ITEMS, 0, -1, dtype=float)
    pd.DataFrame({"item": np.arange(N_ITEMS), "item_id": np.arange(N_ITEMS).astype(str),
                  "popularity": popularity, "is_tail": np.arange(N_ITEMS) >= 12}).to_parquet(
        folder / "items.parquet")
    (folder / "metrics.json").write_text(json.dumps(
        {"status": "ok", "model": model, "data": "toy", "split": "loo", "seed": seed,
         "n_users": N_USERS, "n_items": N_ITEMS, "head_share": 0.2, "n_params": 7,
         "train_seconds": 2.0, "test/ndcg@10": ALONE, "rerank": rerank}))
    return folder


def even(user: int) -> bool:
    return user % 2 == 0


def odd(user: int) -> bool:
    return user % 2 == 1


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    write_member(tmp_path / "0", "a", {"val": even, "test": even}, range(30, 45))
    write_member(tmp_path / "1", "b", {"val": odd, "test": odd}, range(45, 60))
    return tmp_path


def fused_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_weighted_fusion_beats_both_members_as_known(sweep):
    (out,) = fuse_sweep(sweep)
    metrics = fused_metrics(out)
    assert metrics["test/ndcg@10"] == pytest.approx(1.0)
    assert metrics["test/hit@10"] == pytest.approx(1.0)
    description = json.loads((out / "fusion.json").read_text())
    assert sum(description["weights"].values()) == pytest.approx(1.0)
    assert all(w > 0 for w in description["weights"].values())
    assert description["best_single_val_objective"] == pytest.approx(ALONE, abs=1e-6)


def test_reciprocal_rank_fusion_needs_no_tuning(sweep):
    (out,) = fuse_sweep(sweep, FusionSpec(method="rrf"))
    assert out.name == "fusion_rrf"
    assert fused_metrics(out)["test/ndcg@10"] == pytest.approx(1.0)
    weights = json.loads((out / "fusion.json").read_text())["weights"]
    assert list(weights.values()) == [0.5, 0.5]


def test_reciprocal_rank_fusion_leaves_out_the_members_that_outvote_the_best(sweep):
    """Two weak runs that list the same decoys (30-39, as member a's pool) give those decoys
    three reciprocal ranks where the target has two: over all four runs alike the target falls
    below a or b alone. Chosen on validation, the fusion keeps a and b and is perfect."""
    never = {"val": lambda u: True, "test": lambda u: True}
    for name in ("c", "d"):
        write_member(sweep / name, name, never, range(30, 45),
                     present={"val": False, "test": False})
    every = sweep / "rrf_all"
    assert ensemble_main([str(sweep), "method=rrf", "rrf_members=all", f"out={every}",
                          "report=false"]) == 0
    assert fused_metrics(every)["test/ndcg@10"] < ALONE
    (chosen,) = fuse_sweep(sweep, FusionSpec(method="rrf"))
    assert fused_metrics(chosen)["test/ndcg@10"] == pytest.approx(1.0)
    description = json.loads((chosen / "fusion.json").read_text())
    assert description["weights"] == {"a": 0.5, "b": 0.5, "c": 0.0, "d": 0.0}
    assert [m["label"] for m in description["members"]] == ["a", "b"]
    assert description["val_objective"] == pytest.approx(1.0)
    assert description["best_single_val_objective"] == pytest.approx(ALONE)
    with pytest.raises(ValueError, match="rrf_members"):
        FusionSpec(method="rrf", rrf_members="some")


def test_max_members_caps_the_runs_a_fusion_weights(tmp_path):
    """Three runs each list the target first for a third of the users and not at all for the
    others, each with decoys of its own: the three alike rank every target first (equal scores
    go to the lower item, the target), any two rank two thirds, one run a third. Serving a
    fusion loads its weighted runs, so max_members bounds what it loads."""
    for k, name in enumerate("abc"):
        in_third = {stage: (lambda u, k=k: u % 3 == k) for stage in ("val", "test")}
        write_member(tmp_path / name, name, in_third, range(30 + 10 * k, 40 + 10 * k),
                     present=in_third)
    thirds = [sum(u % 3 == k for u in range(N_USERS)) / N_USERS for k in range(3)]  # 14, 13, 13
    expected = {None: 1.0, 2: 1 - min(thirds), 1: max(thirds)}
    for max_members, ndcg in expected.items():
        out = tmp_path / f"fused_{max_members}"
        fuse_sweep(tmp_path, FusionSpec(max_members=max_members), out)
        description = json.loads((out / "fusion.json").read_text())
        assert len(description["members"]) == (max_members or 3)
        assert sum(w > 0 for w in description["weights"].values()) == (max_members or 3)
        assert description["val_objective"] == pytest.approx(ndcg)
        assert fused_metrics(out)["test/ndcg@10"] == pytest.approx(ndcg)
    out = tmp_path / "rrf_2"
    assert ensemble_main([str(tmp_path), "method=rrf", "max_members=2", f"out={out}",
                          "report=false"]) == 0
    assert len(json.loads((out / "fusion.json").read_text())["members"]) == 2
    assert fused_metrics(out)["test/ndcg@10"] == pytest.approx(expected[2])
    for bad in ({"max_members": 0}, {"method": "rrf", "rrf_members": "all", "max_members": 2}):
        with pytest.raises(ValueError, match="max_members"):
            FusionSpec(**bad)


def test_tail_objective_adds_tail_recall(sweep):
    (out,) = fuse_sweep(sweep, FusionSpec(objective="tail", tail_weight=2.0))
    description = json.loads((out / "fusion.json").read_text())
    assert out.name == "fusion_tail"
    # every target is a tail item: NDCG 1 + 2 * TailRecall 1
    assert description["val_objective"] == pytest.approx(3.0)


def test_fusing_a_run_with_itself_keeps_its_metrics(tmp_path):
    write_member(tmp_path / "0", "a", {"val": even, "test": even}, range(30, 45))
    write_member(tmp_path / "1", "a_copy", {"val": even, "test": even}, range(30, 45))
    (out,) = fuse_sweep(tmp_path)
    assert fused_metrics(out)["test/ndcg@10"] == pytest.approx(ALONE, abs=1e-6)


def test_weights_are_tuned_on_validation_only(tmp_path):
    # a is perfect on validation and useless on test; b the other way round
    write_member(tmp_path / "0", "a", {"val": lambda u: True, "test": lambda u: True},
                 range(30, 45), present={"val": True, "test": False})
    write_member(tmp_path / "1", "b", {"val": lambda u: True, "test": lambda u: True},
                 range(45, 60), present={"val": False, "test": True})
    (out,) = fuse_sweep(tmp_path)
    description = json.loads((out / "fusion.json").read_text())
    assert description["weights"] == {"a": 1.0, "b": 0.0}
    # b has no say, so the fused lists are a's alone (b adds no candidates) and serving loads a
    assert [m["label"] for m in description["members"]] == ["a"]
    assert [m["label"] for m in description["left_out"]] == ["b"]
    assert fused_metrics(out)["test/ndcg@10"] == 0.0
    assert fused_metrics(out)["n_params"] == 7  # a's alone


@pytest.mark.parametrize("spec", [FusionSpec(), FusionSpec(normalization="zscore")],
                         ids=["minmax", "zscore"])
def test_a_reranked_member_is_fused_in_its_own_order(tmp_path, spec):
    """A re-ranked run's saved scores are its model's, in the re-ranked order: valued by them,
    the fusion would put back the model's order (here the target, first in the list with the
    lowest score, would fall to 10th). Valued by position, the member keeps its order."""
    always = {"val": lambda u: True, "test": lambda u: True}
    write_member(tmp_path / "0", "a", always, range(30, 45), rerank="xquad")
    write_member(tmp_path / "1", "b", always, range(45, 60), present={"val": False,
                                                                   "test": False})
    (out,) = fuse_sweep(tmp_path, spec)
    assert fused_metrics(out)["test/ndcg@10"] == pytest.approx(1.0)
    members = json.loads((out / "fusion.json").read_text())["members"]
    assert [(m["label"], m["valued_by"]) for m in members] == [("a", "position")]  # b: weight 0


def test_fusion_folder_is_a_run_folder_with_a_leaderboard_row(sweep):
    assert ensemble_main([str(sweep)]) == 0
    out = sweep / "fusion"
    for name in ("metrics.json", "fusion.json", "rankings_val.parquet", "rankings_test.parquet",
                 "per_user_test.parquet", "targets_test.parquet", "items.parquet"):
        assert (out / name).exists(), name
    rankings = pd.read_parquet(out / "rankings_test.parquet")
    assert list(rankings.columns) == ["user", "rank", "item", "score"]
    assert rankings.groupby("user")["rank"].max().eq(LIST).all()  # as long as the members'
    per_user = pd.read_parquet(out / "per_user_test.parquet")
    assert {"user", "ndcg@10", "recall@10", "tail_recall@10"} <= set(per_user.columns)
    assert per_user["ndcg@10"].mean() == pytest.approx(1.0)
    metrics = fused_metrics(out)
    assert metrics["status"] == "ok" and metrics["model"] == "fusion"
    assert metrics["n_params"] == 14 and metrics["train_seconds"] >= 4.0
    assert metrics["code"] == code_version()  # the code that fused, as a training run records
    (table,) = build_leaderboard([sweep], bootstrap_resamples=50).tables
    assert table.frame.iloc[0]["model"] == "fusion"
    assert (sweep / "leaderboard.md").exists()


def test_runs_of_one_seed_are_fused_whatever_seeds_their_models_ran_with(sweep):
    """a also ran with seed 2, b did not: the leaderboard ranks them in separate tables (their
    seed sets differ), yet seed 1's runs of both are one fusion (they used to fall into two
    sets of one run each, under one folder name)."""
    write_member(sweep / "2", "a", {"val": even, "test": even}, range(30, 45), seed=2)
    (out,) = fuse_sweep(sweep)
    description = json.loads((out / "fusion.json").read_text())
    assert sorted(description["weights"]) == ["a", "b"]
    assert fused_metrics(out)["seed"] == 1
    assert fused_metrics(out)["test/ndcg@10"] == pytest.approx(1.0)


def test_one_run_is_not_enough(tmp_path, capsys):
    write_member(tmp_path / "0", "a", {"val": even, "test": even}, range(30, 45))
    with pytest.raises(ValueError, match="nothing to fuse"):
        fuse_sweep(tmp_path)
    assert ensemble_main([str(tmp_path)]) == 2
    with pytest.raises(ValueError, match="method"):
        FusionSpec(method="median")


def test_short_lists_are_filled_with_popular_unlisted_items():
    items = torch.tensor([[4, 2, -1, -1]])
    ok = torch.tensor([[True, True, False, False]])
    filled = _fill_short_lists(items, ok, order=torch.tensor([2, 0, 4, 1, 3]))
    assert filled.tolist() == [[4, 2, 0, 1]]
