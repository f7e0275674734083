"""Preprocessing, splits, popularity and the DataModule's views on small data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recozoo.data import (
    EmptyDatasetError,
    Interactions,
    LeaveOneOut,
    Preprocessing,
    RandomRatioSplit,
    RecDataModule,
    TemporalRatioSplit,
    TrainView,
)
from recozoo.data.popularity import item_popularity, tail_mask
from recozoo.data.sources import ShopSource
from recozoo.data.split import ratio_counts


def tiny(users, items, times, rating=None, event=None) -> Interactions:
    n_users, n_items = max(users) + 1, max(items) + 1
    return Interactions(
        user=np.array(users), item=np.array(items), timestamp=np.array(times, dtype=float),
        user_ids=np.array([f"u{i}" for i in range(n_users)]),
        item_ids=np.array([f"i{i}" for i in range(n_items)]),
        rating=None if rating is None else np.array(rating, dtype=np.float32),
        event=None if event is None else np.array(event, dtype=np.int8), name="tiny")


def test_leave_one_out_holds_out_last_and_second_last_by_time():
    # user 0 in shuffled time order: items 3 (t=5), 1 (t=1), 2 (t=3), 0 (t=4)
    data = tiny([0, 0, 0, 0, 1, 1], [3, 1, 2, 0, 1, 2], [5, 1, 3, 4, 1, 2])
    split = LeaveOneOut()(data, seed=0)
    assert data.item[split.test].tolist() == [3]
    assert data.item[split.valid].tolist() == [0]
    assert sorted(data.item[split.train].tolist()) == [1, 1, 2, 2]  # user 1 (2 rows) trains only


@pytest.mark.parametrize("splitter", [LeaveOneOut(), TemporalRatioSplit(), RandomRatioSplit()])
def test_splits_partition_rows_deterministically_and_never_leak(splitter):
    data = ShopSource(n_users=120, n_items=60, sessions_per_user=3).load()
    data, _ = Preprocessing()(data)
    a, b = splitter(data, seed=3), splitter(data, seed=3)
    for part in ("train", "valid", "test"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    everything = np.concatenate([a.train, a.valid, a.test])
    assert len(everything) == len(data) and len(np.unique(everything)) == len(data)
    # no (user, item) of a held-out target is among the training inputs (dedupe is on)
    train_pairs = set(zip(data.user[a.train], data.item[a.train]))
    for held in (a.valid, a.test):
        assert not train_pairs & set(zip(data.user[held], data.item[held]))
    if splitter.name != "random":  # time-ordered splits: targets are newer than training rows
        last_train = {}
        for u, t in zip(data.user[a.train], data.timestamp[a.train]):
            last_train[u] = max(last_train.get(u, -np.inf), t)
        assert all(t >= last_train[u] for u, t in zip(data.user[a.test], data.timestamp[a.test]))


def test_random_split_depends_on_seed_and_follows_recbole_rounding():
    assert [c.tolist() for c in ratio_counts(np.array([10, 5, 2]), (0.8, 0.1, 0.1))] == \
        [[8, 3, 1], [1, 1, 0], [1, 1, 1]]
    data = ShopSource(n_users=60, n_items=40).load()
    split = RandomRatioSplit()
    assert not np.array_equal(split(data, 1).test, split(data, 2).test)
    with pytest.raises(ValueError, match=r"summing to 1.*\[0.5, 0.5, 0.5\]"):
        RandomRatioSplit(ratios=(0.5, 0.5, 0.5))


def test_preprocessing_counts_what_it_drops():
    data = tiny([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 0], [1, 2, 3, 4, 5, 6],
                rating=[5, 4, 1, 5, 5, 5])
    out, report = Preprocessing(min_rating=4, min_user_interactions=0)(data)
    assert report.dropped == {"rating < 4": 1, "duplicate (user, item)": 1}
    assert len(out) == 4 and out.n_items == 3
    with pytest.raises(EmptyDatasetError, match="empty after preprocessing"):
        Preprocessing(kcore=10)(data)
    with pytest.raises(ValueError, match="has no ratings"):
        Preprocessing(min_rating=3)(tiny([0], [0], [0]))


def test_kcore_is_iterative():
    # item 2 has one user -> dropped; then user 1 has one item left -> dropped
    data = tiny([0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 0, 1], [1, 2, 3, 4, 5, 6])
    out, _ = Preprocessing(kcore=2, min_user_interactions=0)(data)
    assert len(out) == 4 and out.n_users == 2 and out.n_items == 2


def test_dedupe_keeps_first_time_and_strongest_event():
    data = tiny([0, 0, 0], [1, 1, 1], [5, 1, 9], event=[2, 0, 1])
    out, _ = Preprocessing(min_user_interactions=0)(data)
    assert len(out) == 1 and out.timestamp[0] == 1 and out.event[0] == 2


def test_head_is_top_share_of_items_by_training_count():
    pop = item_popularity(np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 6]), 10)
    mask = tail_mask(pop, 0.2)
    assert (~mask).nonzero()[0].tolist() == [0, 1]


def test_shop_has_a_long_tail_and_events():
    data = ShopSource().load()
    pop = np.bincount(data.item, minlength=data.n_items)
    top = np.sort(pop)[::-1][: data.n_items // 5].sum() / pop.sum()
    assert 0.6 < top < 0.9
    assert (pop < 5).mean() > 0.2  # many rare items
    counts = np.bincount(data.event, minlength=3)
    assert counts[0] > counts[1] > counts[2] > 0  # views > carts > purchases
    assert data.items.text is not None and all(data.items.text)
    again = ShopSource().load()
    assert np.array_equal(again.item, data.item)  # seeded


@pytest.fixture(scope="module")
def dm() -> RecDataModule:
    module = RecDataModule(ShopSource(n_users=150, n_items=80), seed=1, history_len=5)
    module.setup()
    return module


def test_eval_batch_masks_inputs_and_holds_targets(dm):
    users = dm.eval_users["test"][:10]
    batch = dm.eval_batch("test", users)
    assert batch.history.shape == (10, 5)
    seen = set(zip(batch.seen_rows.tolist(), batch.seen_cols.tolist()))
    targets = set(zip(batch.target_rows.tolist(), batch.target_cols.tolist()))
    assert len(targets) == 10 and not seen & targets
    # the validation target is an input at test time, never at validation time
    val = dm.eval_batch("val", users)
    val_targets = set(zip(val.target_rows.tolist(), val.target_cols.tolist()))
    assert val_targets <= seen
    val_seen = set(zip(val.seen_rows.tolist(), val.seen_cols.tolist()))
    assert not val_targets & val_seen
    # every input once, sorted by row then item, as the batch says (models skip their sort)
    for each in (batch, val):
        keys = (each.seen_rows * dm.info.n_items + each.seen_cols).tolist()
        assert each.seen_distinct_sorted and keys == sorted(set(keys))
        inputs = dm.eval_inputs["test" if each is batch else "val"]
        for row, user in enumerate(users):
            own = inputs.items[inputs.indptr[user]:inputs.indptr[user + 1]]
            assert set(each.seen_cols[each.seen_rows == row].tolist()) == set(own.tolist())


def test_eval_batches_count_each_users_distinct_inputs_in_head_and_tail(dm):
    """`EvalBatch.input_counts`, counted once per stage for every user, equals a count of the
    batch's own distinct (user, item) inputs, for batches of any users in any order."""
    tail = dm.info.tail_mask.numpy()
    users = dm.eval_users["test"]
    for stage in ("val", "test"):
        for chosen in (users[:7], users[::-3]):
            batch = dm.eval_batch(stage, chosen)
            pairs = set(zip(batch.seen_rows.tolist(), batch.seen_cols.tolist()))
            expected = np.zeros((len(chosen), 2))
            for row, item in pairs:
                expected[row, int(tail[item])] += 1
            assert batch.input_counts.tolist() == expected.tolist()


def test_training_views(dm):
    dm.use_view(TrainView("pairs", batch_size=32, n_negatives=4))
    batch = next(iter(dm.train_dataloader()))
    assert batch["negative"].shape == (32, 4)
    train = set(zip(dm.train.user.tolist(), dm.train.item.tolist()))
    for u, negs in zip(batch["user"].tolist(), batch["negative"].tolist()):
        assert not any((u, n) in train for n in negs)
    dm.use_view(TrainView("sequences", batch_size=16, max_len=6))
    seq = next(iter(dm.train_dataloader()))
    assert seq["input"].shape == seq["target"].shape == (16, 6)
    valid = seq["target"] != -100
    # next-item targets: target[t] == input[t + 1] wherever both are real items
    both = valid[:, :-1] & (seq["input"][:, 1:] != dm.info.pad_item)
    assert torch.equal(seq["target"][:, :-1][both], seq["input"][:, 1:][both])
    dm.use_view(TrainView("user_rows", batch_size=8))
    rows = next(iter(dm.train_dataloader()))
    assert rows["rows"].shape == (8, dm.info.n_items)
    assert rows["rows"].sum(1).tolist() == dm.train_items.lengths(rows["user"].numpy()).tolist()
    # the sparse form (Mult-VAE/DAE): the same users in the same order, the same 0/1 rows
    dm.use_view(TrainView("user_rows", batch_size=8, sparse_rows=True))
    sparse = next(iter(dm.train_dataloader()))
    assert sparse["rows"].is_sparse and sparse["rows"].is_coalesced()
    assert torch.equal(sparse["user"], rows["user"])
    assert torch.equal(sparse["rows"].to_dense(), rows["rows"])
    # marked coalesced without a sort of their own: the entries are in coalesced order, each once
    indices = sparse["rows"].indices()
    recoalesced = torch.sparse_coo_tensor(indices, sparse["rows"].values(), sparse["rows"].shape)
    assert torch.equal(recoalesced.coalesce().indices(), indices)


def test_user_rows_count_a_repeated_interaction_once():
    from recozoo.data.datamodule import UserItems

    # user 0 bought item 3 twice, user 2 item 1 three times; user 1 nothing
    items = UserItems(np.array([0, 2, 0, 2, 0, 2]), np.array([3, 1, 3, 1, 0, 1]),
                      order=np.arange(6), n_users=3)
    distinct = items.distinct(n_items=5)
    assert distinct.indptr.tolist() == [0, 2, 2, 3]
    assert distinct.items.tolist() == [0, 3, 1]  # in item order


def _user_sequences(items) -> list[list[int]]:
    return [items.items[items.indptr[u]:items.indptr[u + 1]].tolist()
            for u in range(len(items.indptr) - 1)]


def test_a_random_split_hands_sequence_models_each_users_items_in_a_seeded_random_order():
    """Under split=random (held-out items are a random share, not the next ones) each user's
    items are in a random order under the seed: one order for training, validation inputs and
    test inputs (train + validation); time order with sequence_order=time, and under every
    split that holds out the next items. An unknown order is refused by name."""
    source = ShopSource(n_users=60, n_items=40)

    def setup(split, seed=1):
        module = RecDataModule(source, split=split, seed=seed, history_len=500)
        module.setup()
        return module

    shuffled, timed = setup(RandomRatioSplit()), setup(RandomRatioSplit(sequence_order="time"))
    assert RandomRatioSplit().sequence_order == "shuffled"
    assert LeaveOneOut().sequence_order == TemporalRatioSplit().sequence_order == "time"
    data = timed.data
    by_time = [list(data.item[rows][np.argsort(data.timestamp[rows], kind="stable")])
               for rows in (timed.indices.train[timed.train.user == u]
                            for u in range(data.n_users))]
    assert _user_sequences(timed.train_items) == [[int(i) for i in r] for r in by_time]
    mixed = _user_sequences(shuffled.train_items)
    assert mixed != _user_sequences(timed.train_items)  # another order ...
    assert [sorted(a) for a in mixed] == [sorted(b) for b in _user_sequences(timed.train_items)]
    assert mixed == _user_sequences(setup(RandomRatioSplit()).train_items)  # ... under the seed
    # the test inputs (train + validation) keep the training items in the training order
    valid = set(zip(shuffled.data.user[shuffled.indices.valid].tolist(),
                    shuffled.data.item[shuffled.indices.valid].tolist()))
    for user, (train, inputs) in enumerate(zip(mixed,
                                               _user_sequences(shuffled.eval_inputs["test"]))):
        assert [i for i in inputs if (user, i) not in valid] == train
    # the evaluation history is that order (history_len 500 holds every input)
    users = shuffled.eval_users["test"][:5]
    history = shuffled.eval_batch("test", users).history.numpy()
    for row, user in zip(history, users):
        inputs = _user_sequences(shuffled.eval_inputs["test"])[user]
        assert row[row != shuffled.info.pad_item].tolist() == inputs
    with pytest.raises(ValueError, match="split.sequence_order must be 'time' or 'shuffled'"):
        setup(RandomRatioSplit(sequence_order="random"))


def test_training_pairs_are_found_alike_by_bit_table_and_search(dm):
    """Negative rejection asks whether (user, item) pairs are training interactions: a bit
    table where the users x items grid is small, a search of sorted keys elsewhere."""
    assert dm._train_bits is not None  # the fixture's grid is small
    rng = np.random.default_rng(0)
    users = np.r_[dm.train.user[:200], rng.integers(0, dm.info.n_users, 2000)]
    items = np.r_[dm.train.item[:200], rng.integers(0, dm.info.n_items, 2000)]
    found = dm._is_training_pair(users, items)
    train = set(zip(dm.train.user.tolist(), dm.train.item.tolist()))
    assert found.tolist() == [(u, i) in train for u, i in zip(users.tolist(), items.tolist())]
    assert found[:200].all() and not found[200:].all()
    bits, dm._train_bits = dm._train_bits, None  # the search, as for a large grid
    try:
        assert np.array_equal(dm._is_training_pair(users, items), found)
    finally:
        dm._train_bits = bits


def test_evaluation_batches_are_sized_to_the_catalogue_unless_fixed(dm):
    from recozoo.data.datamodule import EVAL_SCORES_PER_BATCH

    sizes = [len(batch) for batch in dm.test_dataloader()]
    assert sizes == [len(dm.eval_users["test"])]  # a small catalogue: every user in one batch
    assert dm.users_per_eval_batch() == EVAL_SCORES_PER_BATCH // dm.info.n_items
    fixed = RecDataModule(ShopSource(n_users=150, n_items=80), seed=1, eval_batch_size=16)
    fixed.setup()
    sizes = [len(batch) for batch in fixed.test_dataloader()]
    assert sizes[:-1] == [16] * (len(sizes) - 1) and sum(sizes) == len(fixed.eval_users["test"])


def test_cpu_batches_are_handed_over_as_built(dm):
    batch = dm.eval_batch("test", dm.eval_users["test"][:4])
    assert dm.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch


def test_text_template_may_name_the_item_id():
    """Item text made of ids alone (a dataset whose text says nothing): ``{item_id}`` renders
    each item's external id, whatever the items table calls its key."""
    import pandas as pd

    from recozoo.data.interactions import Interactions

    frame = pd.DataFrame({"u": ["a", "a", "b"], "sku": ["x1", "x2", "x1"], "t": [1, 2, 3]})
    items = pd.DataFrame({"sku": ["x1", "x2"], "title": ["Pen", "Ink"]})
    data = Interactions.from_frame(frame, user_col="u", item_col="sku", time_col="t",
                                   items=items, item_key="sku",
                                   text_template="item {item_id}: {title}. {sku}")
    assert data.items.text == ["item x1: Pen. x1", "item x2: Ink. x2"]


def test_a_training_rows_negatives_do_not_depend_on_its_batch(dm):
    """Pairs' negatives are keyed by (seed, epoch, row): the same row gets the same negatives
    in any batch (so loading several batches at once, DDP's split and resuming change nothing),
    other epochs draw others, and they stay the user's non-interactions, spread over the items,
    whether the training pairs are looked up in the bit table or searched."""
    dm.use_view(TrainView("pairs", batch_size=32, n_negatives=3))
    dm.train_dataloader()  # the sampler whose epoch keys the draws
    rows = np.arange(len(dm.train))
    whole = dm._collate_pairs(rows.tolist())["negative"].numpy()
    part = dm._collate_pairs(rows[40:7:-2].tolist())["negative"].numpy()
    np.testing.assert_array_equal(part, whole[40:7:-2])
    train = set(zip(dm.train.user.tolist(), dm.train.item.tolist()))
    assert not any((u, n) in train for u, negs in zip(dm.train.user.tolist(), whole.tolist())
                   for n in negs)
    assert len(np.unique(whole)) > 0.9 * dm.info.n_items
    bits, dm._train_bits = dm._train_bits, None  # as on data too large for the bit table
    searched = dm._collate_pairs(rows.tolist())["negative"].numpy()
    dm._train_bits = bits
    np.testing.assert_array_equal(searched, whole)
    dm._train_sampler.set_epoch(1)
    other = dm._collate_pairs(rows.tolist())["negative"].numpy()
    assert (other != whole).mean() > 0.9


def test_counter_uniforms_are_uniform_and_keyed():
    from recozoo.data.datamodule import counter_uniforms

    counters = np.arange(200_000, dtype=np.uint64)
    u = counter_uniforms(counters, key=1)
    assert 0.0 <= u.min() and u.max() < 1.0
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    assert np.abs(counts / 10_000 - 1).max() < 0.05  # ~1% standard error per bin
    np.testing.assert_array_equal(counter_uniforms(counters[::-7], key=1), u[::-7])
    assert np.corrcoef(u, counter_uniforms(counters, key=2))[0, 1] < 0.01


def test_user_items_contains_exactly_the_pairs():
    """`UserItems.contains` on a distinct set: every pair found, nothing else, whatever the
    user's length (none, one, many) or where the item falls (first, last, between, outside)."""
    from recozoo.data.datamodule import UserItems

    rng = np.random.default_rng(0)
    n_users, n_items = 7, 50
    lengths = [0, 1, 2, 5, 17, 50, 3]
    users = np.repeat(np.arange(n_users), lengths)
    items = np.concatenate([rng.choice(n_items, k, replace=False) for k in lengths])
    rows = UserItems(users, items, np.zeros(len(users)), n_users).distinct(n_items)
    pairs = set(zip(users.tolist(), items.tolist()))
    every_user, every_item = np.meshgrid(np.arange(n_users), np.arange(n_items), indexing="ij")
    found = rows.contains(every_user.ravel(), every_item.ravel())
    expected = [(u, i) in pairs for u, i in zip(every_user.ravel().tolist(),
                                               every_item.ravel().tolist())]
    assert found.tolist() == expected
    empty = UserItems(np.array([], dtype=np.int64), np.array([], dtype=np.int64), None, 3)
    assert not empty.contains(np.array([0, 2]), np.array([1, 1])).any()


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shuffled_batches_are_distributed_samplers_batches(world_size):
    """`ShuffledBatches` serves, as arrays, the batches a DataLoader of torch's
    DistributedSampler would: the same order for each (seed, epoch), each rank its padded share."""
    from torch.utils.data import DataLoader, DistributedSampler

    from recozoo.data.datamodule import ShuffledBatches

    rows = list(range(103))
    for rank in range(world_size):
        ours = ShuffledBatches(rows, 10, num_replicas=world_size, rank=rank, seed=5)
        torchs = DistributedSampler(rows, num_replicas=world_size, rank=rank, shuffle=True, seed=5)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            torchs.set_epoch(epoch)
            expected = [b.tolist() for b in DataLoader(rows, batch_size=10, sampler=torchs)]
            served = [b.tolist() for b in ours]
            assert served == expected and len(ours) == len(expected)


def _loader_users(loader) -> np.ndarray:
    return np.concatenate([batch.user.numpy() for batch in loader])


def test_selecting_validations_rank_a_seeded_sample_of_users_the_final_one_every_user():
    """eval.val_users: the validation loader (inside fit, and a model's choice of settings)
    ranks a fixed sample of the validation users, drawn from the seed; inside
    every_validation_user, and in the test, every user."""
    def module(seed, val_users):
        dm = RecDataModule(ShopSource(n_users=150, n_items=80), seed=seed, val_users=val_users)
        dm.setup()
        return dm

    dm = module(1, 40)
    every = dm.eval_users["val"]
    assert len(every) > 40
    sample = _loader_users(dm.val_dataloader())
    assert len(sample) == 40 and np.all(np.diff(sample) > 0) and set(sample) <= set(every)
    assert np.array_equal(sample, _loader_users(dm.val_dataloader()))  # the same users each time
    assert np.array_equal(sample, _loader_users(module(1, 40).val_dataloader()))  # from the seed
    assert not np.array_equal(sample, _loader_users(module(2, 40).val_dataloader()))
    with dm.every_validation_user():
        assert np.array_equal(_loader_users(dm.val_dataloader()), every)
    assert np.array_equal(_loader_users(dm.val_dataloader()), sample)  # the context ended
    assert np.array_equal(_loader_users(dm.test_dataloader()), dm.eval_users["test"])
    for enough in (None, len(every), 10_000):  # no more users than the sample: all of them
        assert np.array_equal(_loader_users(module(1, enough).val_dataloader()), every)


@pytest.mark.parametrize("val_users", [0, -5, True])
def test_an_impossible_validation_sample_is_named(val_users):
    with pytest.raises(ValueError, match="eval.val_users"):
        RecDataModule(ShopSource(n_users=20, n_items=10), val_users=val_users)
