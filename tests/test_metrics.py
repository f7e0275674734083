"""The metric suite against hand-computed values and independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score

from recozoo.data.popularity import BUCKETS
from recozoo.metrics import functional as F
from recozoo.metrics import ranking as ranking_metrics
from recozoo.metrics.buckets import BUCKET_METRICS
from recozoo.metrics.ranking import (
    NDCG,
    NO_ITEM,
    Gini,
    ItemCoverage,
    RankedBatch,
    Recall,
    TailRecall,
)
from recozoo.metrics.suite import (
    RANKING_METRICS,
    RATING_METRICS,
    higher_is_better,
    metric_class,
    ranking_suite,
    rating_suite,
)

# two users, catalogue of 6 items; user 0 targets {1, 4}, user 1 targets {5}
TARGETS = torch.tensor([[0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.float32)
LISTS = torch.tensor([[1, 2, 4, 0], [0, 2, 3, 5]])  # ranked lists, best first
TAIL = torch.tensor([False, False, False, True, True, True])
POP = torch.tensor([10.0, 8.0, 6.0, 2.0, 1.0, 0.0])


def ranked() -> RankedBatch:
    return RankedBatch.from_lists(LISTS, TARGETS, TAIL)


def test_accuracy_metrics_match_hand_computed_values():
    r = ranked()
    hits, n = r.hits, r.n_targets
    assert hits.tolist() == [[1, 0, 1, 0], [0, 0, 0, 1]]
    assert F.recall(hits, n, 2).tolist() == [0.5, 0.0]
    assert F.recall(hits, n, 4).tolist() == [1.0, 1.0]
    assert F.precision(hits, n, 4).tolist() == [0.5, 0.25]
    assert F.hit_rate(hits, n, 3).tolist() == [1.0, 0.0]
    assert F.mrr(hits, n, 4).tolist() == [1.0, 0.25]
    # user 0: DCG = 1 + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3)
    expected = 1.5 / (1 + 1 / math.log2(3))
    assert F.ndcg(hits, n, 4)[0].item() == pytest.approx(expected, rel=1e-6)
    assert F.ndcg(hits, n, 4)[1].item() == pytest.approx(1 / math.log2(5), rel=1e-6)
    # AP@4 user 0: (1/1 + 2/3) / 2
    assert F.average_precision(hits, n, 4)[0].item() == pytest.approx((1 + 2 / 3) / 2)
    p, rc = 0.5, 1.0
    assert F.f1(hits, n, 4)[0].item() == pytest.approx(2 * p * rc / (p + rc))


def test_ndcg_matches_sklearn_on_random_rankings():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 40))
    truth = (rng.random((50, 40)) < 0.1).astype(float)
    truth[truth.sum(1) == 0, 0] = 1.0
    items = torch.topk(torch.as_tensor(scores), 10).indices
    r = RankedBatch.from_lists(items, torch.as_tensor(truth, dtype=torch.float32),
                               torch.zeros(40, dtype=torch.bool))
    ours = F.ndcg(r.hits, r.n_targets, 10).numpy()
    reference = [ndcg_score(truth[i:i + 1], scores[i:i + 1], k=10) for i in range(50)]
    np.testing.assert_allclose(ours, reference, rtol=1e-5)


def test_metric_classes_average_over_users_across_batches():
    metric = Recall(2)
    r = ranked()
    metric.update(r)
    metric.update(r)
    assert metric.compute().item() == pytest.approx(0.25)
    ndcg = NDCG(4)
    ndcg.update(r)
    assert ndcg.compute().item() == pytest.approx(F.ndcg(r.hits, r.n_targets, 4).mean().item())


def test_tail_recall_counts_only_users_with_tail_targets():
    metric = TailRecall(4)
    metric.update(ranked())
    # user 0 tail target {4}: found; user 1 tail target {5}: found at rank 4
    assert metric.compute().item() == pytest.approx(1.0)
    metric = TailRecall(2)
    metric.update(ranked())
    assert metric.compute().item() == pytest.approx(0.0)


def test_beyond_accuracy_metrics():
    suite = ranking_suite([2, 4], n_items=6, n_users=10, item_popularity=POP, tail_mask=TAIL)
    suite.update(ranked())
    values = {k: v.item() for k, v in suite.compute().items()}
    # lists@2: [1, 2] and [0, 2]: no tail item
    assert values["aplt@2"] == 0.0
    # lists@4: [1,2,4,0] has one tail item, [0,2,3,5] two: (1/4 + 2/4) / 2
    assert values["aplt@4"] == pytest.approx(0.375)
    assert values["coverage@2"] == pytest.approx(3 / 6)
    assert values["coverage@4"] == pytest.approx(6 / 6)
    assert values["arp@2"] == pytest.approx(((8 + 6) / 2 + (10 + 6) / 2) / 2)
    info = -np.log2((POP.numpy() + 1) / 11)
    assert values["novelty@2"] == pytest.approx(((info[1] + info[2]) / 2 + (info[0] + info[2]) / 2)
                                                / 2, rel=1e-5)
    # exposure@2 = [1, 1, 2, 0, 0, 0]: Gini by the sorted-values formula
    x = np.sort(np.array([1, 1, 2, 0, 0, 0], dtype=float))
    idx = np.arange(1, 7)
    gini = ((2 * idx - 7) * x).sum() / (6 * x.sum())
    assert values["gini@2"] == pytest.approx(gini, rel=1e-5)


def test_gini_extremes():
    assert F.gini(torch.ones(5)).item() == pytest.approx(0.0)
    one_item = torch.tensor([0.0, 0.0, 0.0, 10.0])
    assert F.gini(one_item).item() == pytest.approx(0.75)  # (n-1)/n for a single item


def test_direction_of_every_metric_key():
    assert higher_is_better("test/ndcg@10")
    assert higher_is_better("val/tail_recall@20")
    assert higher_is_better("test/gini@10") is False
    assert higher_is_better("test/arp@10") is False
    assert higher_is_better("test/rmse") is False
    assert higher_is_better("test/mae") is False
    assert higher_is_better("ndcg@10")  # per-user columns carry no stage
    assert higher_is_better("test_cold/recall@20")


def test_direction_is_read_from_the_metric_class():
    # the suites are built from the same tables, so every key a suite writes has a class
    suite = ranking_suite([2], n_items=6, n_users=10, item_popularity=POP, tail_mask=TAIL,
                          item_bucket=torch.tensor([0, 0, 1, 1, 2, 2]))
    for key, metric in {**suite, **rating_suite()}.items():
        assert metric_class(f"test/{key}") is type(metric), key
        assert higher_is_better(f"test/{key}") is type(metric).higher_is_better, key
    # every class states its direction (None only where a metric has none)
    classes = {**RANKING_METRICS, **RATING_METRICS, **BUCKET_METRICS}
    assert {name for name, cls in classes.items() if cls.higher_is_better is None} == {"exposure"}
    assert {name for name, cls in {**RANKING_METRICS, **RATING_METRICS}.items()
            if cls.higher_is_better is False} == {"gini", "arp", "popreo", "poprsp", "rmse",
                                                  "mae"}


def test_unknown_metric_keys_are_refused_with_the_key():
    with pytest.raises(ValueError, match="'test/loss@10'"):
        higher_is_better("test/loss@10")
    with pytest.raises(ValueError, match="'test/recall@10/tail'.*distant"):
        higher_is_better("test/recall@10/tail")  # the bucket is "distant" now
    with pytest.raises(ValueError, match="'test/gini@10/head'"):
        higher_is_better("test/gini@10/head")


def test_bad_k_is_rejected_with_the_value():
    with pytest.raises(ValueError, match="K=10 is larger than the catalogue"):
        ranking_suite([10], n_items=6, n_users=3, item_popularity=POP, tail_mask=TAIL)
    with pytest.raises(ValueError, match="-1"):
        Recall(-1)
    with pytest.raises(ValueError, match="within 1..4"):
        F.recall(ranked().hits, ranked().n_targets, 5)


def test_bucket_exposure_has_no_best_direction():
    assert higher_is_better("test/exposure@10/head") is None
    assert higher_is_better("test/recall@10/distant") is True


def test_a_mean_over_no_qualifying_user_is_nan():
    # no user has a tail target: tail recall has no value (not 0)
    metric = TailRecall(4)
    metric.update(RankedBatch.from_lists(LISTS, TARGETS, torch.zeros(6, dtype=torch.bool)))
    assert math.isnan(metric.compute().item())
    # no user has any target: every user-averaged accuracy metric has no value
    for cls in (Recall, NDCG):
        metric = cls(2)
        metric.update(RankedBatch.from_lists(LISTS, torch.zeros_like(TARGETS), TAIL))
        assert math.isnan(metric.compute().item())
    # one qualifying user in a second batch: the mean is over that user alone
    metric = TailRecall(4)
    metric.update(RankedBatch.from_lists(LISTS, TARGETS, torch.zeros(6, dtype=torch.bool)))
    metric.update(ranked())
    assert metric.compute().item() == pytest.approx(1.0)


def test_exposure_metrics_without_a_list_are_nan():
    for cls in (ItemCoverage, Gini):
        metric = cls(2, 6)
        empty = RankedBatch.from_lists(LISTS[:0], TARGETS[:0], TAIL)
        metric.update(empty)
        assert math.isnan(metric.compute().item()), cls.__name__


def test_suite_where_no_test_user_has_a_tail_target_gives_nan_tail_recall():
    # every target is a head item: tail_recall and the mid/distant recalls have no value
    head_targets = torch.tensor([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.float32)
    bucket = torch.tensor([0, 0, 1, 1, 2, 2])
    suite = ranking_suite([4], n_items=6, n_users=10, item_popularity=POP, tail_mask=bucket > 0,
                          item_bucket=bucket).clone(prefix="test/")
    suite.update(RankedBatch.from_lists(LISTS, head_targets, bucket > 0, bucket))
    values = {k: v.item() for k, v in suite.compute().items()}
    assert math.isnan(values["test/tail_recall@4"])
    for name in ("recall", "ndcg"):
        assert math.isnan(values[f"test/{name}@4/{BUCKETS[1]}"])
        assert math.isnan(values[f"test/{name}@4/distant"])
    # user 0's target (item 0) is at rank 4, user 1's (item 1) is not in the list
    assert values["test/recall@4/head"] == pytest.approx(0.5)
    assert values["test/recall@4"] == pytest.approx(0.5)
    # list properties do not depend on targets and keep their values: tail items {2, 3, 4, 5}
    assert values["test/aplt@4"] == pytest.approx((2 / 4 + 3 / 4) / 2)


@pytest.mark.parametrize("dense_membership", [True, False], ids=["dense_table", "binary_search"])
def test_pairs_and_dense_targets_make_the_same_batch(monkeypatch, dense_membership):
    """`RankedBatch.from_pairs` (what evaluation uses: no (B, n_items) matrix) counts hits, tail
    hits and per-bucket targets as a dense 0/1 target matrix does, with repeated pairs once and
    padded slots never hit; both ways of finding the listed targets (a dense table for small
    batches, a binary search above `DENSE_MEMBERSHIP_MAX_ENTRIES`)."""
    monkeypatch.setattr(ranking_metrics, "DENSE_MEMBERSHIP_MAX_ENTRIES",
                        1 << 30 if dense_membership else 0)
    generator = torch.Generator().manual_seed(0)
    n_rows, n_items, k = 7, 30, 5
    items = torch.stack([torch.randperm(n_items, generator=generator)[:k] for _ in range(n_rows)])
    items[2, 3:] = NO_ITEM  # a short list
    rows = torch.randint(0, n_rows, (40,), generator=generator)
    cols = torch.randint(0, n_items, (40,), generator=generator)
    rows, cols = torch.cat([rows, rows[:5]]), torch.cat([cols, cols[:5]])  # repeated pairs
    cols[0] = items[0, 0]  # at least one hit
    bucket = torch.randint(0, len(BUCKETS), (n_items,), generator=generator)
    tail = bucket > 0
    dense = torch.zeros(n_rows, n_items)
    dense[rows, cols] = 1.0
    sparse = RankedBatch.from_pairs(items, rows, cols, tail, bucket)
    safe, present = items.clamp(min=0), items != NO_ITEM
    expected_hits = dense.gather(1, safe) * present
    assert expected_hits.sum() > 0
    assert torch.equal(sparse.hits, expected_hits)
    assert torch.equal(sparse.tail_hits, expected_hits * tail[safe])
    assert torch.equal(sparse.n_targets, dense.sum(1))
    assert torch.equal(sparse.n_tail_targets, (dense * tail).sum(1))
    assert torch.equal(sparse.n_bucket_targets,
                       dense @ torch.nn.functional.one_hot(bucket, len(BUCKETS)).float())
    assert torch.equal(sparse.list_bucket, torch.where(present, bucket[safe], NO_ITEM))
    from_dense = RankedBatch.from_lists(items, dense, tail, bucket)
    for field in ("hits", "tail_hits", "n_targets", "n_tail_targets", "n_bucket_targets"):
        assert torch.equal(getattr(from_dense, field), getattr(sparse, field)), field


def test_the_suite_sharing_pieces_within_a_batch_equals_each_metric_on_its_own():
    # the suite computes pieces several metrics read once per batch (RankedBatch.shared) and
    # keeps every member's sums in stacked states; a key that left out something a piece
    # depends on (K, a bucket), or a row of a state given to another member, would hand one
    # metric another's value. Each metric updated alone, on batches of its own, must agree.
    generator = torch.Generator().manual_seed(3)
    n_users, n_items = 40, 30
    popularity = torch.randint(0, 50, (n_items,), generator=generator).float()
    tail = popularity < popularity.quantile(0.7)
    bucket = torch.randint(0, len(BUCKETS), (n_items,), generator=generator)
    heavy = torch.rand(n_users, generator=generator) < 0.3
    lists = torch.stack([torch.randperm(n_items, generator=generator)[:10]
                         for _ in range(n_users)])
    rows = torch.randint(0, n_users, (120,), generator=generator)
    cols = torch.randint(0, n_items, (120,), generator=generator)
    n_inputs = torch.randint(0, 5, (n_users, 2), generator=generator)

    def batches() -> list[RankedBatch]:  # two, so the states must add up
        return [RankedBatch.from_pairs(ordered, rows, cols, tail, bucket,
                                       users=torch.arange(n_users), n_inputs=n_inputs)
                for ordered in (lists, lists.flip(1))]

    suite = ranking_suite([3, 10], n_items, n_users, popularity, tail, bucket, heavy)
    for ranked in batches():
        suite.update(ranked)
    together = {k: float(v) for k, v in suite.compute().items()}
    alone = {}
    for name, metric in ranking_suite([3, 10], n_items, n_users, popularity, tail, bucket,
                                      heavy).items():
        for ranked in batches():
            metric.update(ranked)
        alone[name] = float(metric.compute())
    assert len(together) == 54
    assert list(together) == list(alone)  # the table order
    for name, value in together.items():
        # the suite sums in float64, a metric alone in float32 per batch
        assert value == pytest.approx(alone[name], rel=1e-6, nan_ok=True), name
    # and the pieces are not all alike: K and the bucket change the values
    assert together["ndcg@3"] != together["ndcg@10"]
    assert len({together[f"recall@10/{b}"] for b in BUCKETS}) > 1


def test_mrr_is_the_reciprocal_rank_of_the_first_hit():
    hits = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    assert F.mrr(hits, torch.ones(3), 4).tolist() == pytest.approx([1 / 3, 0.0, 1.0])
    assert F.mrr(hits, torch.ones(3), 2).tolist() == [0.0, 0.0, 1.0]
