"""Per-popularity-bucket metrics (recall, NDCG, exposure per head/mid/distant) on known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recozoo.data.popularity import BUCKETS, popularity_buckets, tail_mask
from recozoo.metrics.buckets import BucketExposure, BucketNDCG, BucketRecall
from recozoo.metrics.ranking import RankedBatch
from recozoo.metrics.suite import ranking_suite

# 10 items: head {0, 1}, mid {2, 3, 4}, distant {5, ..., 9}
POPULARITY = torch.tensor([50, 40, 30, 20, 10, 5, 4, 3, 2, 1.0])
BUCKET = torch.as_tensor(popularity_buckets(POPULARITY.numpy(), 0.2, 0.5))


def ranked(items: list[list[int]], targets: list[list[int]]) -> RankedBatch:
    target = torch.zeros(len(items), 10)
    for row, chosen in enumerate(targets):
        target[row, chosen] = 1.0
    return RankedBatch.from_lists(torch.tensor(items), target, BUCKET > 0, BUCKET)


def test_buckets_extend_the_head_tail_partition():
    assert BUCKET.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    rng = np.random.default_rng(0)
    popularity = rng.integers(0, 20, 301).astype(float)  # many ties
    for head_share in (0.1, 0.2, 0.33):
        buckets = popularity_buckets(popularity, head_share)
        assert np.array_equal(buckets > 0, tail_mask(popularity, head_share))
        assert (buckets == 2).sum() == round(0.5 * 301)
        # every distant item is at most as popular as every mid item
        assert popularity[buckets == 2].max() <= popularity[buckets == 1].min()
    with pytest.raises(ValueError, match="tail_share"):
        popularity_buckets(popularity, 0.2, 1.5)


def test_bucket_recall_and_ndcg_by_hand():
    # user 0: targets 0 (head) and 7 (distant); list hits 7 at rank 2
    # user 1: target 3 (mid) at rank 1; user 2: target 9 (distant), missed
    batch = ranked([[1, 7, 2], [3, 0, 5], [0, 1, 2]], [[0, 7], [3], [9]])
    values = {}
    for bucket in BUCKETS:
        for name, cls in (("recall", BucketRecall), ("ndcg", BucketNDCG)):
            metric = cls(3, bucket)
            metric.update(batch)
            values[f"{name}/{bucket}"] = metric.compute().item()
    assert values["recall/head"] == pytest.approx(0.0)  # user 0's head target missed
    assert values["recall/mid"] == pytest.approx(1.0)  # only user 1 has a mid target
    assert values["recall/distant"] == pytest.approx(0.5)  # users 0 (hit) and 2 (miss)
    assert values["ndcg/distant"] == pytest.approx(0.5 * (1 / math.log2(3)))
    assert values["ndcg/mid"] == pytest.approx(1.0)


def test_bucket_names_keep_tail_for_everything_outside_the_head():
    # "tail" is mid and distant together (tail_mask, tail_recall, aplt); the bottom bucket is
    # "distant", so no metric key says "tail" for a smaller set of items
    assert BUCKETS == ("head", "mid", "distant")
    assert (BUCKET > 0).tolist() == tail_mask(POPULARITY.numpy(), 0.2).tolist()
    with pytest.raises(ValueError, match="'tail'"):
        BucketRecall(3, "tail")


def test_bucket_accuracy_without_a_target_in_the_bucket_is_nan():
    # no user has a distant target: no value (NaN), not a recall of 0
    batch = ranked([[5, 6, 7], [0, 1, 2]], [[0], [3]])
    for cls in (BucketRecall, BucketNDCG):
        metric = cls(3, "distant")
        metric.update(batch)
        assert math.isnan(metric.compute().item()), cls.__name__
    exposure = BucketExposure(3, "distant")  # the lists still show distant items
    exposure.update(batch)
    assert exposure.compute().item() == pytest.approx(0.5)


def test_bucket_exposure_is_share_of_list_slots():
    batch = ranked([[0, 5, 6, 2], [1, 0, 3, 9]], [[0], [1]])
    shares = {}
    for bucket in BUCKETS:
        metric = BucketExposure(4, bucket)
        metric.update(batch)
        shares[bucket] = metric.compute().item()
    assert shares == pytest.approx({"head": 3 / 8, "mid": 2 / 8, "distant": 3 / 8})


def test_suite_names_bucket_metrics_like_design():
    suite = ranking_suite([5], 10, 4, POPULARITY, BUCKET > 0, item_bucket=BUCKET)
    suite = suite.clone(prefix="test/")
    batch = ranked([[0, 5, 6, 2, 9], [1, 0, 3, 9, 8]], [[5], [2]])
    suite.update(batch)
    values = suite.compute()
    for bucket in BUCKETS:
        for name in ("recall", "ndcg", "exposure"):
            assert f"test/{name}@5/{bucket}" in values
    assert sum(values[f"test/exposure@5/{b}"] for b in BUCKETS).item() == pytest.approx(1.0)
    assert values["test/recall@5/distant"].item() == pytest.approx(1.0)
    assert values["test/recall@5/mid"].item() == pytest.approx(0.0)
    # the existing keys are unchanged
    assert "test/tail_recall@5" in values and "test/ndcg@5" in values


def test_metrics_json_has_bucket_keys(make_config):
    from recozoo.train import train

    cfg = make_config(["model=pop"])
    metrics = train(cfg)
    for stage in ("val", "test"):
        for bucket in BUCKETS:
            for name in ("recall", "ndcg", "exposure"):
                assert 0.0 <= metrics[f"{stage}/{name}@10/{bucket}"] <= 1.0
    assert metrics["rerank"] == "none" and metrics["debias"] == "none"
