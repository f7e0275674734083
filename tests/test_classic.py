"""Closed-form models against the maths written out in NumPy, on small data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recozoo.models.components import interaction_matrix as im


def _pairs(n_users: int, n_items: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    dense = np.zeros((n_users, n_items))
    dense[user, item] = 1.0
    return torch.as_tensor(user), torch.as_tensor(item), dense


def test_item_cooccurrence_in_one_block_or_many_is_exact(monkeypatch):
    user, item, dense = _pairs(30, 12, 200)  # duplicates included: they count once
    expected = dense.T @ dense
    fast = im.item_cooccurrence(user, item, 30, 12)
    monkeypatch.setattr(im, "DENSE_ENTRIES", 12 * 7)  # blocks of 7 users, the last one short
    blocked = im.item_cooccurrence(user, item, 30, 12)
    assert np.array_equal(fast.numpy(), expected) and np.array_equal(blocked.numpy(), expected)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ease_weights_are_the_closed_form(dtype):
    from recozoo.data.datamodule import DatasetInfo
    from recozoo.models.ease import EASE

    n_users, n_items, reg = 40, 15, 5.0
    user, item, dense = _pairs(n_users, n_items, 150, seed=3)
    info = DatasetInfo(name="tiny", n_users=n_users, n_items=n_items,
                       item_popularity=torch.as_tensor(dense.sum(0)),
                       tail_mask=torch.zeros(n_items, dtype=torch.bool), head_share=0.2)
    model = EASE(info, reg_weight=reg, inverse_dtype=dtype)
    model.training_step({"user": user, "item": item}, 0)
    precision = np.linalg.inv(dense.T @ dense + reg * np.eye(n_items))
    expected = -precision / np.diag(precision)[None, :]
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(model.item_weights.numpy(), expected, atol=1e-5)


def test_ease_scores_are_the_inputs_times_the_weights_with_repeats_counted_once():
    from recozoo.data.contracts import EvalBatch
    from recozoo.data.datamodule import DatasetInfo
    from recozoo.models.ease import EASE

    n_users, n_items = 40, 15
    user, item, dense = _pairs(n_users, n_items, 150, seed=3)
    info = DatasetInfo(name="tiny", n_users=n_users, n_items=n_items,
                       item_popularity=torch.as_tensor(dense.sum(0)),
                       tail_mask=torch.zeros(n_items, dtype=torch.bool), head_share=0.2)
    model = EASE(info, reg_weight=5.0)
    model.training_step({"user": user, "item": item}, 0)
    # three users' inputs, unordered, the first user's item 4 twice and the last user with none
    batch = EvalBatch(user=torch.tensor([7, 3, 9]), history=torch.zeros(3, 1, dtype=torch.long),
                      seen_rows=torch.tensor([1, 0, 0, 1, 0]),
                      seen_cols=torch.tensor([2, 4, 11, 0, 4]),
                      target_rows=torch.tensor([0]), target_cols=torch.tensor([5]))
    rows = np.zeros((3, n_items))
    rows[[0, 0, 1, 1], [4, 11, 2, 0]] = 1.0
    assert np.array_equal(batch.seen_sparse(n_items).to_dense().numpy(), rows)
    assert np.array_equal(batch.seen_matrix(n_items).numpy(), rows)
    expected = rows @ model.item_weights.numpy().astype(np.float64)
    assert np.allclose(model.score(batch).numpy(), expected, atol=1e-5)


def test_ease_rejects_an_unknown_precision():
    from recozoo.data.datamodule import DatasetInfo
    from recozoo.models.ease import EASE

    info = DatasetInfo(name="tiny", n_users=2, n_items=3, item_popularity=torch.ones(3),
                       tail_mask=torch.zeros(3, dtype=torch.bool), head_share=0.2)
    with pytest.raises(ValueError, match="inverse_dtype"):
        EASE(info, inverse_dtype="float16")
