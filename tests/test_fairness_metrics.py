"""Popularity-fairness metrics (PopREO, PopRSP, ACLT), NDCG of light and heavy users, and lists
with empty slots, against hand-computed values; their directions in the leaderboard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recozoo.data.contracts import DatasetInfo, heavy_user_mask
from recozoo.metrics import functional as F
from recozoo.metrics.fairness import ACLT, HeavyUserNDCG, LightUserNDCG, PopREO, PopRSP
from recozoo.metrics.ranking import NO_ITEM, RankedBatch, inputs_per_group
from recozoo.metrics.suite import higher_is_better, ranking_suite
from recozoo.report import build_leaderboard

# 6 items: 0-2 head, 3-5 tail. user 0 targets {1 (head), 4 (tail)}, user 1 targets {5 (tail)}
TARGETS = torch.tensor([[0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.float32)
LISTS = torch.tensor([[1, 2, 4, 0], [0, 2, 3, 5]])
TAIL = torch.tensor([False, False, False, True, True, True])
POP = torch.tensor([10.0, 8.0, 6.0, 2.0, 1.0, 0.0])
# inputs: user 0 saw item 3 (twice: counts once), user 1 saw items 1 (head) and 4 (tail)
INPUT_ROWS, INPUT_COLS = torch.tensor([0, 0, 1, 1]), torch.tensor([3, 3, 1, 4])
USERS = torch.tensor([0, 1])
HEAVY = torch.tensor([True, False, False])  # user 0 heavy, users 1 and 2 light


def ranked(rows: slice = slice(None)) -> RankedBatch:
    n_inputs = inputs_per_group(INPUT_ROWS, INPUT_COLS, 2, TAIL)
    return RankedBatch.from_lists(LISTS[rows], TARGETS[rows], TAIL, users=USERS[rows],
                                  n_inputs=n_inputs[rows])


def value(metric, *batches: RankedBatch) -> float:
    for batch in batches:
        metric.update(batch)
    return metric.compute().item()


def test_inputs_are_counted_once_per_item_and_group():
    assert inputs_per_group(INPUT_ROWS, INPUT_COLS, 2, TAIL).tolist() == [[0, 1], [1, 1]]


def test_relative_std_of_two_groups_is_their_gap_over_their_sum():
    assert F.relative_std(torch.tensor([1.0, 0.75])).item() == pytest.approx(0.25 / 1.75)
    assert F.relative_std(torch.tensor([0.3, 0.3])).item() == 0.0
    assert math.isnan(F.relative_std(torch.tensor([0.0, 0.0])).item())
    assert math.isnan(F.group_disparity(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])))


def test_pop_reo_is_the_gap_between_head_and_tail_hit_probabilities():
    # @2: head target hit 1 of 1, tail targets hit 0 of 2 -> |1 - 0| / (1 + 0)
    assert value(PopREO(2, TAIL), ranked()) == pytest.approx(1.0)
    # @3: user 0 hits 1 (head) and 4 (tail); user 1 misses 5: head 1/1, tail 1/2
    assert value(PopREO(3, TAIL), ranked()) == pytest.approx(0.5 / 1.5)
    # @4: every target is hit: equal opportunity
    assert value(PopREO(4, TAIL), ranked()) == pytest.approx(0.0)
    # per-batch sums: two batches give the one-batch value (what the DDP sum reduction relies on)
    assert value(PopREO(3, TAIL), ranked(slice(0, 1)), ranked(slice(1, 2))) == \
        pytest.approx(0.5 / 1.5)


def test_pop_rsp_is_the_gap_between_head_and_tail_recommendation_probabilities():
    # candidates (items not among the user's inputs): user 0 head 3, tail 2; user 1 head 2,
    # tail 2 -> head 5, tail 4 in all
    # @2: lists [1, 2] and [0, 2]: 4 head items of 5, 0 tail items of 4 -> 1
    assert value(PopRSP(2, TAIL), ranked()) == pytest.approx(1.0)
    # @4: head 3 + 2 = 5 of 5, tail 1 + 2 = 3 of 4 -> |1 - 0.75| / 1.75
    assert value(PopRSP(4, TAIL), ranked()) == pytest.approx(1 / 7)
    assert value(PopRSP(4, TAIL), ranked(slice(0, 1)), ranked(slice(1, 2))) == \
        pytest.approx(1 / 7)


def test_parity_metrics_without_a_defined_group_probability_are_nan():
    head_only = torch.tensor([[0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    no_tail_target = RankedBatch.from_lists(LISTS, head_only, TAIL)
    assert math.isnan(value(PopREO(4, TAIL), no_tail_target))  # no tail target
    nothing_hit = RankedBatch.from_lists(torch.tensor([[2, 3], [2, 3]]), TARGETS, TAIL)
    assert math.isnan(value(PopREO(2, TAIL), nothing_hit))  # both probabilities 0
    # lists without the users' inputs: the candidates are unknown
    assert math.isnan(value(PopRSP(4, TAIL), RankedBatch.from_lists(LISTS, TARGETS, TAIL)))
    assert math.isnan(PopRSP(4, TAIL).compute().item())  # no list at all


def test_aclt_counts_tail_items_per_list():
    assert value(ACLT(2, TAIL), ranked()) == 0.0
    assert value(ACLT(3, TAIL), ranked()) == pytest.approx((1 + 1) / 2)
    assert value(ACLT(4, TAIL), ranked()) == pytest.approx((1 + 2) / 2)


def test_ndcg_of_light_and_heavy_users():
    ndcg = F.ndcg(ranked().hits, ranked().n_targets, 4)
    assert value(HeavyUserNDCG(4, HEAVY), ranked()) == pytest.approx(ndcg[0].item())
    assert value(LightUserNDCG(4, HEAVY), ranked()) == pytest.approx(ndcg[1].item())
    assert ndcg[0].item() == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # no heavy user among the evaluated ones, or users unknown: no value
    assert math.isnan(value(HeavyUserNDCG(4, HEAVY), ranked(slice(1, 2))))
    assert math.isnan(value(LightUserNDCG(4, HEAVY), RankedBatch.from_lists(LISTS, TARGETS,
                                                                            TAIL)))
    assert math.isnan(value(LightUserNDCG(4, None), ranked()))


def test_heavy_users_are_the_top_share_by_training_activity():
    assert heavy_user_mask(np.array([5, 1, 9, 0, 2]), 0.4).tolist() == [True, False, True,
                                                                       False, False]
    assert heavy_user_mask(np.array([3, 3, 1, 0]), 0.25).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="heavy_user_share.*1.5"):
        heavy_user_mask(np.array([1, 2]), 1.5)
    info = DatasetInfo.from_popularity("tiny", 5, POP.numpy()[:5], 0.2,
                                       user_activity=torch.tensor([5, 1, 9, 0, 2]),
                                       heavy_user_share=0.4)
    assert info.heavy_users.tolist() == [True, False, True, False, False]
    assert DatasetInfo.from_popularity("tiny", 5, POP.numpy(), 0.2).heavy_users is None
    with pytest.raises(ValueError, match="3 values, expected one per user \\(5\\)"):
        DatasetInfo.from_popularity("tiny", 5, POP.numpy(), 0.2,
                                    user_activity=torch.tensor([1, 2, 3]))


def test_suite_reports_the_new_metrics_with_their_direction():
    suite = ranking_suite([4], 6, 3, POP, TAIL, item_bucket=torch.tensor([0, 0, 1, 1, 2, 2]),
                          heavy_users=HEAVY)
    bucket = torch.tensor([0, 0, 1, 1, 2, 2])
    n_inputs = inputs_per_group(INPUT_ROWS, INPUT_COLS, 2, TAIL)
    suite.update(RankedBatch.from_lists(LISTS, TARGETS, TAIL, bucket, users=USERS,
                                        n_inputs=n_inputs))
    values = {k: v.item() for k, v in suite.compute().items()}
    assert values["poprsp@4"] == pytest.approx(1 / 7)
    assert values["popreo@4"] == pytest.approx(0.0)
    assert values["aclt@4"] == pytest.approx(1.5)
    assert values["ndcg_heavy_users@4"] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert values["ndcg_light_users@4"] == pytest.approx(1 / math.log2(5))
    assert higher_is_better("test/popreo@10") is False
    assert higher_is_better("test/poprsp@20") is False
    assert higher_is_better("test/aclt@10") is True
    assert higher_is_better("test/ndcg_heavy_users@10") is True
    assert higher_is_better("test/ndcg_light_users@10") is True


def test_empty_slots_are_no_item():
    # user 0 lists only item 1; user 1 has no list, and its target is item 0: an empty slot
    # (NO_ITEM) must not read as item 0
    targets = torch.tensor([[0, 1, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    items = torch.tensor([[1, NO_ITEM, NO_ITEM, NO_ITEM], [NO_ITEM] * 4])
    bucket = torch.tensor([0, 0, 1, 1, 2, 2])
    suite = ranking_suite([4], 6, 3, POP, TAIL, item_bucket=bucket)
    batch = RankedBatch.from_lists(items, targets, TAIL, bucket)
    suite.update(batch)
    values = {k: v.item() for k, v in suite.compute().items()}
    assert batch.hits.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    assert values["recall@4"] == pytest.approx((0.5 + 0) / 2)
    assert values["precision@4"] == pytest.approx((0.25 + 0) / 2)
    assert values["coverage@4"] == pytest.approx(1 / 6)
    assert values["arp@4"] == pytest.approx(8.0)  # over the one listed item; user 1 has no list
    assert values["aplt@4"] == 0.0
    assert values["aclt@4"] == 0.0
    assert values["exposure@4/head"] == pytest.approx((0.25 + 0) / 2)


def _run(folder: Path, model: str, extra: dict) -> Path:
    folder.mkdir(parents=True)
    metrics = {"status": "ok", "model": model, "data": "shop", "split": "loo", "seed": 1,
               "n_users": 4, "n_items": 6, "head_share": 0.2, "test/ndcg@10": 0.3, **extra}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"user": np.arange(4), "ndcg@10": [0.3] * 4}).to_parquet(
        folder / "per_user_test.parquet")
    return folder


def test_leaderboard_ranks_old_runs_beside_new_ones_in_each_metrics_direction(tmp_path):
    _run(tmp_path / "old", "old", {})  # written before the fairness metrics existed
    _run(tmp_path / "a", "a", {"test/popreo@10": 0.4, "test/poprsp@10": 0.2,
                               "test/aclt@10": 1.0, "test/ndcg_heavy_users@10": 0.5})
    _run(tmp_path / "b", "b", {"test/popreo@10": 0.1, "test/poprsp@10": 0.6,
                               "test/aclt@10": 3.0, "test/ndcg_heavy_users@10": 0.2})
    (table,) = build_leaderboard([tmp_path], bootstrap_resamples=10).tables
    assert set(table.frame["model"]) == {"old", "a", "b"}
    assert table.best["test/popreo@10"] == "b" and table.best["test/poprsp@10"] == "a"
    assert table.best["test/aclt@10"] == "b" and table.best["test/ndcg_heavy_users@10"] == "a"
    old = table.frame.set_index("model").loc["old"]
    assert math.isnan(old["test/popreo@10"])
