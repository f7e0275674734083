"""split=global_temporal: one cut-off time for all users, on small data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import compose_config

from recozoo.data import Interactions, Preprocessing, RecDataModule
from recozoo.data.sources import ShopSource
from recozoo.data.split import GlobalTemporalSplit


def tiny(users, items, times) -> Interactions:
    return Interactions(
        user=np.array(users), item=np.array(items), timestamp=np.array(times, dtype=float),
        user_ids=np.array([f"u{i}" for i in range(max(users) + 1)]),
        item_ids=np.array([f"i{i}" for i in range(max(items) + 1)]), name="tiny")


# 10 rows at times 0..9. Training (t < 8 by the 80% quantile): users 0, 1 and items 0-3.
#   t=8: user 0, item 1  (validation)
#   t=9: user 1, item 2  (test)
DATA = tiny(users=[0, 1, 0, 1, 0, 1, 0, 1, 0, 1], items=[0, 1, 2, 3, 0, 1, 3, 0, 1, 2],
            times=range(10))


def test_cut_offs_at_the_ratio_quantiles_of_all_interactions():
    split = GlobalTemporalSplit(ratios=(0.8, 0.1, 0.1))
    assert split.cutoffs(DATA.timestamp) == (8.0, 9.0)
    parts = split(DATA, seed=0)
    assert parts.train.tolist() == list(range(8))
    assert parts.valid.tolist() == [8] and parts.test.tolist() == [9]
    assert parts.dropped == {}


def test_ties_at_a_cut_off_are_never_split():
    # four rows at t=5: the 50% cut-off lands inside them, so all four validate or test
    data = tiny([0, 1, 0, 1, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 5, 5, 5, 5, 9])
    split = GlobalTemporalSplit(ratios=(0.5, 0.25, 0.25))
    valid_from, test_from = split.cutoffs(data.timestamp)
    assert (valid_from, test_from) == (5.0, 5.0)
    parts = split(data, seed=0)
    assert parts.train.tolist() == [0, 1, 2] and parts.valid.tolist() == []


def test_explicit_cut_offs_as_numbers_or_dates():
    parts = GlobalTemporalSplit(valid_from=6, test_from="8")(DATA, seed=0)
    assert parts.train.tolist() == list(range(6))
    # t=6 (user 0, item 3) and t=7 (user 1, item 0) validate; item 3 / item 0 were trained on
    assert parts.valid.tolist() == [6, 7] and parts.test.tolist() == [8, 9]
    day = 86400.0
    dated = tiny([0, 0, 0, 0], [0, 1, 2, 3], [0, day, 2 * day, 3 * day])
    split = GlobalTemporalSplit(valid_from="1970-01-02", test_from="1970-01-03T00:00:00Z",
                                new_items="keep")
    assert split.cutoffs(dated.timestamp) == (day, 2 * day)
    assert split(dated, seed=0).test.tolist() == [2, 3]


def test_bad_settings_name_the_key_and_the_value():
    with pytest.raises(ValueError, match="valid_from and split.test_from go together"):
        GlobalTemporalSplit(valid_from=3)
    with pytest.raises(ValueError, match="split.valid_from must be a time.*'soon'"):
        GlobalTemporalSplit(valid_from="soon", test_from=3).cutoffs(DATA.timestamp)
    with pytest.raises(ValueError, match="is after split.test_from"):
        GlobalTemporalSplit(valid_from=5, test_from=3).cutoffs(DATA.timestamp)
    with pytest.raises(ValueError, match="summing to 1"):
        GlobalTemporalSplit(ratios=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="new_items.*'maybe'"):
        GlobalTemporalSplit(new_items="maybe")
    with pytest.raises(ValueError, match="no interaction at or after the test cut-off 100; the "
                                         "timestamps span 0..9"):
        GlobalTemporalSplit(valid_from=8, test_from=100)(DATA, seed=0)


def test_held_out_rows_that_cannot_be_evaluated_are_left_out_and_counted():
    # training: t < 4: users 0, 1; items 0, 1. Held out (t >= 4):
    #   t=4 user 2 item 0: a user first seen after the cut-off       -> dropped
    #   t=5 user 0 item 5: an item first seen after the cut-off      -> dropped (new_items=drop)
    #   t=6 user 0 item 0: a repeat of a training (user, item)       -> dropped
    #   t=7 user 1 item 2: fine (item 2 trained by user 0)           -> validation
    #   t=8 user 1 item 2: repeats the validation row, a test input  -> dropped
    #   t=9 user 0 item 3: fine                                      -> test
    data = tiny(users=[0, 1, 0, 1, 2, 0, 0, 1, 1, 0], items=[0, 1, 2, 3, 0, 5, 0, 2, 2, 3],
                times=range(10))
    parts = GlobalTemporalSplit(valid_from=4, test_from=8)(data, seed=0)
    assert parts.train.tolist() == [0, 1, 2, 3]
    assert parts.valid.tolist() == [7] and parts.test.tolist() == [9]
    assert sorted(parts.dropped.values()) == [1, 1, 2]
    reasons = " ".join(parts.dropped)
    assert "users with no training interaction" in reasons and "items with no training" in reasons
    assert "already among the user's inputs" in reasons
    # keeping new items: the t=5 row stays a validation target
    kept = GlobalTemporalSplit(valid_from=4, test_from=8, new_items="keep")(data, seed=0)
    assert kept.valid.tolist() == [5, 7]


def test_no_training_row_is_newer_than_a_held_out_row_and_no_target_is_an_input():
    data, _ = Preprocessing()(ShopSource(n_users=120, n_items=60, sessions_per_user=3).load())
    a, b = GlobalTemporalSplit()(data, seed=1), GlobalTemporalSplit()(data, seed=2)
    for part in ("train", "valid", "test"):
        assert np.array_equal(getattr(a, part), getattr(b, part))  # time alone decides
    assert data.timestamp[a.train].max() < data.timestamp[a.valid].min()
    assert data.timestamp[a.valid].max() < data.timestamp[a.test].min()
    parts = np.concatenate([a.train, a.valid, a.test])
    assert len(np.unique(parts)) == len(parts)
    assert len(parts) + sum(a.dropped.values()) == len(data)
    train_users, train_items = set(data.user[a.train]), set(data.item[a.train])
    train_pairs = set(zip(data.user[a.train], data.item[a.train]))
    test_inputs = train_pairs | set(zip(data.user[a.valid], data.item[a.valid]))
    assert set(data.user[a.test]) <= train_users and set(data.item[a.test]) <= train_items
    assert not train_pairs & set(zip(data.user[a.valid], data.item[a.valid]))
    assert not test_inputs & set(zip(data.user[a.test], data.item[a.test]))


def test_the_config_group_builds_a_datamodule(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_config(["split=global_temporal", "split.ratios=[0.7,0.15,0.15]"], tmp_path)
    split = instantiate(cfg.split)
    assert isinstance(split, GlobalTemporalSplit) and split.ratios == (0.7, 0.15, 0.15)
    dm = RecDataModule(ShopSource(n_users=80, n_items=40, sessions_per_user=3), split=split)
    dm.setup()
    assert len(dm.eval_users["test"]) > 0
    # evaluated users all have training history
    assert (dm.info.user_activity[dm.eval_users["test"]] > 0).all()
