"""Closed-form models against the maths written out in NumPy, on small data with known answers."""

from __future__ import annotations

import itertools
import math

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


@pytest.mark.parametrize("min_density", [0.0, float("inf")], ids=["syrk", "bags"])
def test_item_cooccurrence_in_one_block_or_many_is_exact(monkeypatch, min_density):
    """Both ways of counting (BLAS's symmetric rank-k update for dense data, bags for sparse),
    each in one block of users and in several."""
    monkeypatch.setattr(im, "DENSE_GRAM_MIN_DENSITY", min_density)
    user, item, dense = _pairs(30, 12, 200)  # duplicates included: they count once
    expected = dense.T @ dense
    fast = im.item_cooccurrence(user, item, 30, 12)
    monkeypatch.setattr(im, "DENSE_ENTRIES", 12 * 7)  # blocks of 7 users, the last one short
    monkeypatch.setattr(im, "BAG_CHUNK_ENTRIES", 12 * 5)  # bags summed 5 items at a time
    blocked = im.item_cooccurrence(user, item, 30, 12)
    assert np.array_equal(fast.numpy(), expected) and np.array_equal(blocked.numpy(), expected)
    upper = im.item_cooccurrence(user, item, 30, 12, upper_only=True)  # for one-triangle readers
    assert np.array_equal(np.triu(upper.numpy()), np.triu(expected))
    # counted into a given buffer (EASE's weights), whatever it held
    buffer = torch.full((12, 12), float("nan"))
    assert im.item_cooccurrence(user, item, 30, 12, out=buffer) is buffer
    assert np.array_equal(buffer.numpy(), expected)
    with pytest.raises(ValueError, match=r"out must be a contiguous \(12, 12\) float32"):
        im.item_cooccurrence(user, item, 30, 12, out=torch.zeros(12, 12).T)


def test_item_cooccurrence_columns_are_the_whole_matrix_a_block_at_a_time():
    user, item, dense = _pairs(30, 12, 200, seed=4)  # duplicates included: they count once
    expected = dense.T @ dense
    users_of_item, blocks = im.item_cooccurrence_columns(user, item, 30, 12, block=5)
    assert np.array_equal(users_of_item.numpy(), np.diag(expected))
    blocks = list(blocks)
    assert [(start, stop) for start, stop, _ in blocks] == [(0, 5), (5, 10), (10, 12)]
    for start, stop, columns in blocks:  # 5, 5, then a short one
        assert np.array_equal(columns.numpy(), expected[:, start:stop])


@pytest.mark.parametrize("budget", [2**23, 6])
def test_item_cooccurrence_rows_are_the_whole_matrix_kept_sparse(monkeypatch, budget):
    """Sparse rows a block of items at a time: the counts of the item pairs some user shares,
    columns ascending within a row, nothing stored for pairs no user shares. A block holds at
    most ``block`` items and, unless it is one item, rows of at most `ROW_BLOCK_PRODUCTS`
    products (their entries are fewer)."""
    monkeypatch.setattr(im, "ROW_BLOCK_PRODUCTS", budget)
    user, item, dense = _pairs(30, 12, 40, seed=4)  # sparse; duplicates included: once each
    expected = dense.T @ dense
    users_of_item, blocks = im.item_cooccurrence_rows(user, item, 30, 12, block=5)
    assert np.array_equal(users_of_item.numpy(), np.diag(expected))
    blocks = list(blocks)
    bounds = [(start, stop) for start, stop, *_ in blocks]
    assert bounds[0][0] == 0 and bounds[-1][1] == 12
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))  # consecutive, no gap
    products = dense.T @ dense.sum(1)  # (items,) each row's products
    for start, stop in bounds:
        assert stop - start <= 5
        assert stop - start == 1 or products[start:stop].sum() <= budget
    if budget == 2**23:
        assert bounds == [(0, 5), (5, 10), (10, 12)]
    else:
        assert len(bounds) > 3
    for start, stop, crow, col, counts in blocks:
        rows = torch.sparse_csr_tensor(crow, col, counts, (stop - start, 12))
        assert np.array_equal(rows.to_dense().numpy(), expected[start:stop])
        assert len(counts) == np.count_nonzero(expected[start:stop])
        for r in range(stop - start):
            assert (col[crow[r]:crow[r + 1]].diff() > 0).all()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ease_weights_are_the_closed_form(dtype):
    from recozoo.models.ease import EASE

    n_items, reg = 15, 5.0
    user, item, dense = _pairs(40, n_items, 150, seed=3)
    model = EASE(_info(dense), reg_weight=reg, inverse_dtype=dtype)
    model.training_step({"user": user, "item": item}, 0)
    precision = np.linalg.inv(dense.T @ dense + reg * np.eye(n_items))
    expected = -precision / np.diag(precision)[None, :]
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(model.item_weights.numpy(), expected, atol=1e-5)


@pytest.fixture(params=["PASSIVE", "ACTIVE"])
def wait_policy(request, monkeypatch):
    """Each OpenMP wait policy: `spd_inverse` inverts through SciPy under PASSIVE, torch else."""
    monkeypatch.setenv("OMP_WAIT_POLICY", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("column_order", [False, True])
def test_spd_inverse_inverts_and_leaves_its_input_alone(dtype, column_order, wait_policy):
    from recozoo.models.ease import spd_inverse

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(40, 40, generator=generator, dtype=torch.float64)
    matrix = (a @ a.T + 40 * torch.eye(40, dtype=torch.float64)).to(dtype)
    if column_order:  # a transposed view: LAPACK's own order, so no copy would be made for it
        matrix = matrix.clone().T
    before = matrix.clone()
    inverse = spd_inverse(matrix)
    assert inverse.dtype == dtype and torch.equal(inverse, inverse.T)
    assert torch.allclose(inverse @ before, torch.eye(40, dtype=dtype), atol=1e-5)
    assert torch.equal(matrix, before)
    # only the upper triangle is read: anything below it changes nothing
    below = torch.ones(40, 40, dtype=torch.bool).tril(-1)
    scribbled = before.masked_fill(below, -1e9)
    assert torch.equal(spd_inverse(scribbled), inverse)
    # as scratch (EASE's Gram matrix): the same inverse
    assert torch.allclose(spd_inverse(matrix, overwrite=True), inverse, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 30])
def test_mirror_upper_triangle_copies_the_upper_triangle_over_the_lower_across_tiles(n):
    from recozoo.models.components.interaction_matrix import mirror_upper_triangle

    matrix = torch.randn(n, n, generator=torch.Generator().manual_seed(n))
    upper = matrix.triu()
    result = mirror_upper_triangle(matrix, block=8)  # tiles of 8: whole, partial and one
    assert result is matrix  # in place
    assert torch.equal(result, upper + upper.T.tril(-1))


def test_spd_inverse_names_a_matrix_that_is_not_positive_definite(wait_policy):
    from recozoo.models.ease import spd_inverse

    with pytest.raises(ValueError, match="not positive definite.*reg_weight"):
        spd_inverse(torch.diag(torch.tensor([1.0, -1.0, 2.0])))


def _info(dense: np.ndarray):
    from recozoo.data.datamodule import DatasetInfo

    n_users, n_items = dense.shape
    return DatasetInfo(name="tiny", n_users=n_users, n_items=n_items,
                       item_popularity=torch.as_tensor(dense.sum(0)),
                       tail_mask=torch.zeros(n_items, dtype=torch.bool), head_share=0.2)


def _three_users_inputs(n_items: int):
    """Three users' inputs, unordered, the first user's item 4 twice and the last user with
    none, as an EvalBatch and as the dense 0/1 rows a model should read."""
    from recozoo.data.contracts import EvalBatch

    batch = EvalBatch(user=torch.tensor([7, 3, 9]), history=torch.zeros(3, 1, dtype=torch.long),
                      seen_rows=torch.tensor([1, 0, 0, 1, 0]),
                      seen_cols=torch.tensor([2, 4, 11, 0, 4]),
                      target_rows=torch.tensor([0]), target_cols=torch.tensor([5]))
    rows = np.zeros((3, n_items))
    rows[[0, 0, 1, 1], [4, 11, 2, 0]] = 1.0
    return batch, rows


def test_ease_scores_are_the_inputs_times_the_weights_with_repeats_counted_once():
    from recozoo.models.ease import EASE

    user, item, dense = _pairs(40, 15, 150, seed=3)
    model = EASE(_info(dense), reg_weight=5.0)
    model.training_step({"user": user, "item": item}, 0)
    batch, rows = _three_users_inputs(15)
    assert np.array_equal(batch.seen_sparse(15).to_dense().numpy(), rows)
    assert np.array_equal(batch.seen_matrix(15).numpy(), rows)
    expected = rows @ model.item_weights.numpy().astype(np.float64)
    assert np.allclose(model.score(batch).numpy(), expected, atol=1e-5)


def test_climb_measures_outward_from_the_start_while_the_value_rises():
    """`climb` measures the start, then down while rising, else up; each setting once; a NaN
    is the lowest value; a tie keeps the setting nearer the start; the start must be a
    setting of the grid."""
    from recozoo.models.components.grid_climb import climb

    grid = [1.0, 2.0, 3.0, 4.0, 5.0]
    curve = {1.0: 0.1, 2.0: 0.5, 3.0: 0.4, 4.0: 0.3, 5.0: 0.2}
    seen = []

    def value(setting):
        seen.append(setting)
        return curve[setting]

    assert climb(grid, 4.0, value) == (2.0, {4.0: 0.3, 3.0: 0.4, 2.0: 0.5, 1.0: 0.1})
    assert seen == [4.0, 3.0, 2.0, 1.0]
    seen.clear()
    assert climb(grid, 1.0, value)[0] == 2.0 and seen == [1.0, 2.0, 3.0]  # nothing below
    assert climb(grid, 3.0, {1.0: 0, 2.0: 0.4, 3.0: 0.4, 4.0: 0.4, 5.0: 0}.get)[0] == 3.0
    best, values = climb(grid, 3.0, {2.0: float("nan"), 3.0: 0.1, 4.0: 0.2, 5.0: 0.1}.get)
    assert best == 4.0 and values[2.0] == float("-inf")
    with pytest.raises(ValueError, match="not in the grid"):
        climb(grid, 2.5, value)


def _closed_form(dense: np.ndarray, reg: float) -> np.ndarray:
    precision = np.linalg.inv(dense.T @ dense + reg * np.eye(dense.shape[1]))
    weights = -precision / np.diag(precision)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


@pytest.mark.parametrize("peak, tried, chosen", [
    (40.0, [10, 5, 20, 40, 80], 40.0),   # the first step down falls: up while it rises
    (4.0, [10, 5, 2.5], 5.0),            # down while it rises; never up (single-peaked)
    (10.0, [10, 5, 20], 10.0),           # both neighbours lower: the start stays
])
def test_ease_chooses_its_l2_weight_on_validation_refitting_outward(peak, tried, chosen):
    """With reg_grid, the L2 weight is chosen on validation after the fit: outward from
    reg_weight along the sorted grid while validation rises, each weight fitted and validated
    once; the weights are then the closed form at the chosen value, which the model records."""
    from recozoo.models.ease import EASE

    user, item, dense = _pairs(40, 15, 150, seed=3)
    model = EASE(_info(dense), reg_weight=10.0, reg_grid=[80, 2.5, 5, 20, 40, 160],
                 inverse_dtype="float64")
    assert model.reg_grid == [2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0]  # reg_weight added
    model.training_step({"user": user, "item": item}, 0)
    assert float(model.fitted_reg_weight) == 10.0
    seen = []

    def validate():  # a single-peaked validation curve in log(L2 weight), its top at `peak`
        reg = float(model.fitted_reg_weight)
        assert np.allclose(model.item_weights.numpy(), _closed_form(dense, reg), atol=1e-5)
        seen.append(reg)
        return 1.0 - abs(np.log(reg / peak))

    result = model.choose_on_validation(validate)
    assert seen == tried
    assert result["reg_weight"] == chosen and float(model.fitted_reg_weight) == chosen
    assert list(result["reg_validation"]) == [f"{w:g}" for w in sorted(tried)]
    assert np.allclose(model.item_weights.numpy(), _closed_form(dense, chosen), atol=1e-5)


def test_ease_without_a_grid_or_a_fit_in_this_process_chooses_nothing(tmp_path, caplog):
    """reg_grid null keeps reg_weight without validating; a model loaded from a checkpoint
    (no training pairs here) keeps the weights it was saved with and says so. A checkpoint from
    before the setting was fitted with reg_weight. A grid of weights <= 0 is refused."""
    from recozoo.models.ease import EASE

    user, item, dense = _pairs(40, 15, 150, seed=3)
    fixed = EASE(_info(dense), reg_weight=10.0)
    fixed.training_step({"user": user, "item": item}, 0)
    assert fixed.choose_on_validation(lambda: pytest.fail("validated")) == {}
    state = {k: v for k, v in fixed.state_dict().items() if k != "fitted_reg_weight"}
    checkpoint = {"state_dict": state}
    loaded = EASE(_info(dense), reg_weight=10.0, reg_grid=[5.0, 20.0])
    loaded.on_load_checkpoint(checkpoint)
    loaded.load_state_dict(checkpoint["state_dict"])  # strict: the fitted weight filled in
    assert float(loaded.fitted_reg_weight) == 10.0
    assert torch.equal(loaded.item_weights, fixed.item_weights)
    with caplog.at_level("WARNING"):
        assert loaded.choose_on_validation(lambda: pytest.fail("validated")) == {}
    assert "not fitted in this process" in caplog.text
    for bad in ([], [0.0, 5.0], [-1.0]):
        with pytest.raises(ValueError, match="reg_grid must hold L2 weights > 0"):
            EASE(_info(dense), reg_grid=bad)


def test_a_run_chooses_the_ease_l2_weight_and_tests_and_serves_with_it(make_config):
    """train.py lets EASE choose its L2 weight on validation: the choice is in metrics.json,
    the best checkpoint holds the weights fitted with it, and the test and serving use them."""
    from conftest import train_and_read_choice

    cfg = make_config(["model=ease", "model.reg_weight=50", "model.reg_grid=[1,5,50,500]"])
    record, values, state, served = train_and_read_choice(cfg, "reg_weight", "reg_validation")
    chosen = record.chosen_on_validation
    assert 50.0 in values and len(values) >= 2
    assert chosen["reg_weight"] == max(values, key=lambda w: (values[w], w == 50.0))
    assert float(state["fitted_reg_weight"]) == chosen["reg_weight"]
    assert torch.equal(served.item_weights, state["item_weights"])


def test_seen_sum_is_the_input_rows_times_a_matrix_bit_for_bit():
    from recozoo.data.contracts import EvalBatch

    batch, rows = _three_users_inputs(15)
    weights = torch.randn(15, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch.seen_sum(weights), torch.sparse.mm(batch.seen_sparse(15), weights))
    assert np.allclose(batch.seen_sum(weights).numpy(), rows @ weights.numpy(), atol=1e-6)
    nothing = EvalBatch(user=torch.tensor([1, 2]), history=torch.zeros(2, 1, dtype=torch.long),
                        seen_rows=torch.tensor([], dtype=torch.long),
                        seen_cols=torch.tensor([], dtype=torch.long),
                        target_rows=torch.tensor([0]), target_cols=torch.tensor([5]))
    assert torch.equal(nothing.seen_sum(weights), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="outside the catalogue's 0..9"):
        batch.seen_sum(weights[:10])  # item 11 is not in a 10-item catalogue
    with pytest.raises(ValueError, match="outside the catalogue's 0..9"):
        batch.seen_sparse(10)


def test_seen_sum_in_column_blocks_is_the_whole_matrix_sum_bit_for_bit(monkeypatch):
    """Dense weights in blocks of columns that fit a core's cache (`column_blocks`, here a
    pretend cache of 128 columns of 15 float32 rows): the same sums, block by block, into fresh
    memory or the memory the batch offers; weights too tall or too narrow to block stay whole."""
    from recozoo.data import contracts
    from recozoo.data.contracts import ColumnBlocks, column_blocks

    monkeypatch.setattr(contracts, "l2_cache_bytes", lambda: 15 * 4 * 128)
    batch, _ = _three_users_inputs(15)
    weights = torch.randn(15, 300, generator=torch.Generator().manual_seed(0))
    blocked = column_blocks(weights)
    assert isinstance(blocked, ColumnBlocks) and blocked.shape == (15, 300)
    assert [block.shape[1] for block in blocked.blocks] == [128, 128, 44]
    expected = batch.seen_sum(weights)
    assert torch.equal(batch.seen_sum(blocked), expected)
    batch.scores_out = torch.full((3, 300), math.nan)
    scores = batch.seen_sum(blocked)
    assert scores.data_ptr() == batch.scores_out.data_ptr() and torch.equal(scores, expected)
    with pytest.raises(ValueError, match="outside the catalogue's 0..9"):
        batch.seen_sum(column_blocks(torch.randn(10, 300)))  # item 11 is not among 10 rows
    assert isinstance(column_blocks(torch.randn(16, 300)), torch.Tensor)  # 64 columns: narrow
    assert isinstance(column_blocks(weights[:, :128]), torch.Tensor)  # one block: the matrix
    assert isinstance(column_blocks(weights.to_sparse_csr()), torch.Tensor)


def test_the_l2_cache_is_read_from_linux_cache_descriptions(tmp_path):
    """`column_blocks` sizes its blocks from the L2 cache Linux describes: the data or unified
    cache of level 2, whatever the order of the index folders; none where there is none."""
    from recozoo.runtime import cache_size_from_sysfs

    (tmp_path / "uevent").write_text("")  # sysfs keeps a file beside the index folders
    (tmp_path / "index9").mkdir()  # and a description without its files is skipped
    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction",
                                                  "32K"), ("2", "Unified", "2048K"),
                                                 ("3", "Unified", "105M")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(text + "\n")
    assert cache_size_from_sysfs(str(tmp_path), level=2) == 2 << 20
    assert cache_size_from_sysfs(str(tmp_path), level=3) == 105 << 20
    assert cache_size_from_sysfs(str(tmp_path), level=4) is None
    assert cache_size_from_sysfs(str(tmp_path / "missing"), level=2) is None


def test_closed_form_scoring_weights_follow_a_refit_and_a_load(monkeypatch):
    """EASE and ItemKNN score from their weights in the form scoring reads (`derived`: in
    column blocks here), kept between batches; a refit, a state-dict load and a pickled copy
    score with the weights they hold, never with a stale form."""
    import pickle

    from recozoo.data import contracts
    from recozoo.models.ease import EASE
    from recozoo.models.itemknn import ItemKNN

    monkeypatch.setattr(contracts, "l2_cache_bytes", lambda: 300 * 4 * 128)
    user, item, dense = _pairs(60, 300, 900, seed=5)
    batch, rows = _three_users_inputs(300)
    for make in (lambda: EASE(_info(dense), reg_weight=5.0), lambda: ItemKNN(_info(dense))):
        model = make()
        model.training_step({"user": user, "item": item}, 0)
        first = model.score(batch).clone()
        assert isinstance(model._derived["scoring_weights"][1], contracts.ColumnBlocks)
        assert torch.equal(model.score(batch), first)
        other = make()
        other.training_step({"user": user[:400], "item": item[:400]}, 0)
        model.load_state_dict(other.state_dict())
        assert torch.equal(model.score(batch), other.score(batch))
        assert not torch.equal(model.score(batch), first)
        copy = pickle.loads(pickle.dumps(model))
        assert torch.equal(copy.score(batch), other.score(batch))
    ease = EASE(_info(dense), reg_weight=5.0)
    ease.training_step({"user": user, "item": item}, 0)
    before = ease.score(batch).clone()
    ease.fit_pairs(user, item, 500.0)  # a refit in place, as the choice on validation does
    assert not torch.equal(ease.score(batch), before)
    assert torch.allclose(ease.score(batch), torch.as_tensor(rows, dtype=torch.float32)
                          @ ease.item_weights, atol=1e-5)


@pytest.mark.parametrize("chunk", [1 << 22, 5])  # one pass, and a few entries a pass
def test_seen_sum_of_sparse_rows_is_the_dense_rows_sum(monkeypatch, chunk):
    """Sparse CSR weights (ItemKNN's above DENSE_SCORING_MAX_ITEMS): each user's sum of the
    rows of its inputs, as with the dense matrix, whether added in one pass or several, into
    fresh memory or the memory the batch offers; users without inputs score 0."""
    from recozoo.data import contracts
    from recozoo.data.contracts import EvalBatch

    monkeypatch.setattr(contracts, "CSR_SUM_ENTRIES", chunk)
    batch, _ = _three_users_inputs(15)
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(15, 9, generator=generator) * (torch.rand(15, 9, generator=generator)
                                                       < 0.4)  # ~60% zeros
    dense[3] = 0.0  # an item whose row is empty
    sparse = dense.to_sparse_csr()
    expected = batch.seen_sum(dense)
    assert torch.allclose(batch.seen_sum(sparse), expected, atol=1e-6)
    batch.scores_out = torch.full((3, 9), math.nan)
    scores = batch.seen_sum(sparse)
    assert scores.data_ptr() == batch.scores_out.data_ptr()
    assert torch.allclose(scores, expected, atol=1e-6)
    nothing = EvalBatch(user=torch.tensor([1, 2]), history=torch.zeros(2, 1, dtype=torch.long),
                        seen_rows=torch.tensor([], dtype=torch.long),
                        seen_cols=torch.tensor([], dtype=torch.long),
                        target_rows=torch.tensor([0]), target_cols=torch.tensor([5]))
    assert torch.equal(nothing.seen_sum(sparse), torch.zeros(2, 9))


@pytest.mark.parametrize("threads", [1, 2])
def test_the_cpu_csr_product_equals_adding_entry_by_entry_bit_for_bit(monkeypatch, threads):
    """On a CPU the sparse rows' sums are SciPy's product, in chunks of users on torch's
    threads; the path other devices take adds the entries one by one. Both add each user's
    inputs in the same order, so they agree to the bit, in one chunk or many, for users with
    and without inputs, and write into the memory offered."""
    from recozoo.data import contracts

    generator = torch.Generator().manual_seed(3)
    n_users, n_items = 40, 300
    dense = torch.randn(n_items, n_items, generator=generator)
    dense *= torch.rand(n_items, n_items, generator=generator) < 0.05
    dense[:20] = 0.0  # items whose rows are empty
    matrix = dense.to_sparse_csr()
    pairs = torch.randint(0, n_items, (2, 600), generator=generator)
    rows, cols = pairs[0] % (n_users - 5), pairs[1]  # the last 5 users have no inputs
    expected = torch.zeros(n_users, n_items)
    rows_d, cols_d = contracts.distinct_pairs(rows, cols, n_items)
    crow = matrix.crow_indices()
    contracts._csr_product_by_entries(rows_d, crow[cols_d], crow[cols_d + 1] - crow[cols_d],
                                      matrix, expected)
    assert torch.allclose(expected, contracts.zero_one_sparse(rows, cols, (n_users, n_items))
                          @ dense, atol=1e-5)
    assert expected[-5:].abs().sum() == 0
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    for chunk in (1 << 22, 50):  # one chunk; many, of one user each
        monkeypatch.setattr(contracts, "CSR_SUM_ENTRIES", chunk)
        out = torch.full((n_users, n_items), math.nan)
        result = contracts.zero_one_csr_product(rows, cols, n_users, matrix, out=out)
        assert result.data_ptr() == out.data_ptr()
        assert torch.equal(result, expected)
        assert torch.equal(contracts.zero_one_csr_product(rows, cols, n_users, matrix), expected)


def test_the_sparse_inputs_are_coalesced_with_each_pair_once():
    """Unordered pairs with a repeat become a coalesced COO matrix, one 1 per distinct pair in
    (row, item) order, as ``torch``'s own ``coalesce`` orders them."""
    batch, rows = _three_users_inputs(15)
    matrix = batch.seen_sparse(15)
    assert matrix.is_coalesced()
    assert matrix.indices().tolist() == [[0, 0, 1, 1], [4, 11, 0, 2]]
    assert matrix.values().tolist() == [1.0] * 4
    assert np.array_equal(batch.seen_sparse(15, layout=torch.sparse_csr).to_dense().numpy(), rows)


@pytest.mark.parametrize("path", ["dense", "sparse scoring", "sparse fit"])
def test_itemknn_scores_sum_the_top_k_shrunk_cosine_neighbours(monkeypatch, path):
    """The same model whichever way it is fitted (dense co-occurrence blocks, or kept sparse)
    and scored (dense weights, or the sparse rows of the large-catalogue path)."""
    from recozoo.models import itemknn

    n_items, k, shrink = 15, 4, 2.0
    user, item, dense = _pairs(40, n_items, 150, seed=5)
    if path != "dense":
        monkeypatch.setattr(itemknn, "DENSE_SCORING_MAX_ITEMS", 0)  # the large-catalogue path
    model = itemknn.ItemKNN(_info(dense), k=k, shrink=shrink, block_size=6)  # 3 blocks
    assert model._counts_dense(user)  # small and dense: pairs x items < 128 x sum(items^2)
    if path == "sparse fit":
        monkeypatch.setattr(itemknn, "SPARSE_FIT_MIN_RATIO", 0.0)
        assert not model._counts_dense(user)
    model.training_step({"user": user, "item": item}, 0)
    norms = np.sqrt(dense.sum(0))
    sims = dense.T @ dense / (norms[:, None] * norms[None, :] + shrink + 1e-12)
    np.fill_diagonal(sims, 0.0)
    weights = model.similarity().to_dense().numpy()
    assert np.array_equal(model.dense_similarity().numpy(), weights)
    csr = model.csr_similarity()  # the same matrix, without the zero weights
    assert np.array_equal(csr.to_dense().numpy(), weights)
    assert torch.equal(csr.values() != 0, torch.ones(len(csr.values()), dtype=torch.bool))
    for j in range(n_items):  # column j keeps k of its most similar items (ties either way)
        kept = np.flatnonzero(weights[:, j])
        assert np.allclose(weights[kept, j], sims[kept, j], atol=1e-6)
        assert np.allclose(np.sort(sims[kept, j]), np.sort(sims[:, j])[-len(kept):], atol=1e-6)
        assert len(kept) == k or np.count_nonzero(sims[:, j]) < k
    batch, rows = _three_users_inputs(n_items)
    assert np.allclose(model.score(batch).numpy(), rows @ weights, atol=1e-5)


def test_itemknn_dense_and_sparse_fits_keep_the_same_neighbours_among_equal_ones(monkeypatch):
    """Similarities of counts tie often; at the k-th place both fits keep the lower item
    (`recozoo.top_k`'s rule and `csr_top_k`'s), so a catalogue's fit does not depend on which
    way the data's density sends it (`torch.topk` took other equal items on 1,000 items)."""
    from recozoo.models import itemknn

    user, item, dense = _pairs(300, 1000, 5000, seed=0)
    fits = []
    for ratio in (float("inf"), 0.0):  # dense blocks, then kept sparse
        monkeypatch.setattr(itemknn, "SPARSE_FIT_MIN_RATIO", ratio)
        model = itemknn.ItemKNN(_info(dense), k=20, shrink=2.0)
        model.training_step({"user": user, "item": item}, 0)
        fits.append(model.dense_similarity())
    assert torch.equal(fits[0], fits[1])


def test_itemknn_chooses_shrinkage_then_neighbourhood_on_validation():
    """With shrink_grid and k_grid: the shrinkage climbs first at k (refitting), then the
    neighbourhood size at the chosen shrinkage (no refit: the first k of the kept neighbours
    score); the model then scores as one fitted with the chosen pair."""
    from recozoo.models.itemknn import ItemKNN

    user, item, dense = _pairs(40, 15, 150, seed=5)
    model = ItemKNN(_info(dense), k=4, shrink=2.0, shrink_grid=[0.0, 8.0, 2.0],
                    k_grid=[2, 8], block_size=6)
    assert model.neighbor_index.shape == (8, 15)  # the grid's largest k kept
    model.training_step({"user": user, "item": item}, 0)
    peak = {"shrink": 8.0, "k": 2}
    seen = []

    def validate():
        shrink, k = float(model.fitted_shrink), int(model.neighbours)
        seen.append((shrink, k))
        return -abs(shrink - peak["shrink"]) - abs(k - peak["k"])

    result = model.choose_on_validation(validate)
    assert seen == [(2.0, 4), (0.0, 4), (8.0, 4), (8.0, 2)]
    assert (result["shrink"], result["k"]) == (8.0, 2)
    assert result["shrink_validation"] == {"0": -10.0, "2": -8.0, "8": -2.0}
    assert result["k_validation"] == {"2": 0.0, "4": -2.0}
    fresh = ItemKNN(_info(dense), k=2, shrink=8.0, block_size=6)
    fresh.training_step({"user": user, "item": item}, 0)
    batch, _ = _three_users_inputs(15)
    assert torch.allclose(model.score(batch), fresh.score(batch), atol=1e-6)
    # the training pairs are freed after the choice: a second one keeps what was chosen
    assert model.choose_on_validation(lambda: pytest.fail("validated")) == {}
    assert (float(model.fitted_shrink), int(model.neighbours)) == (8.0, 2)
    for bad in ({"k_grid": []}, {"k_grid": [0, 5]}, {"shrink_grid": [-1.0]}):
        with pytest.raises(ValueError, match="itemknn"):
            ItemKNN(_info(dense), **bad)


def test_an_itemknn_checkpoint_from_before_the_grids_scores_as_it_did():
    """Weights saved with k rows and no chosen settings load into a model that keeps more
    neighbours (k_grid): the missing rows are weight 0 and the scores are unchanged."""
    from recozoo.models.itemknn import ItemKNN

    user, item, dense = _pairs(40, 15, 150, seed=5)
    old = ItemKNN(_info(dense), k=4, shrink=2.0, block_size=6)
    old.training_step({"user": user, "item": item}, 0)
    state = {k: v for k, v in old.state_dict().items()
             if k not in ("neighbours", "fitted_shrink")}
    checkpoint = {"state_dict": state}
    new = ItemKNN(_info(dense), k=4, shrink=2.0, k_grid=[2, 8], shrink_grid=[0.0, 2.0])
    new.on_load_checkpoint(checkpoint)
    new.load_state_dict(checkpoint["state_dict"])  # strict
    assert int(new.neighbours) == 4 and float(new.fitted_shrink) == 2.0
    batch, _ = _three_users_inputs(15)
    assert torch.equal(new.score(batch), old.score(batch))


def test_ease_rejects_an_unknown_precision():
    from recozoo.data.datamodule import DatasetInfo
    from recozoo.models.ease import EASE

    info = DatasetInfo(name="tiny", n_users=2, n_items=3, item_popularity=torch.ones(3),
                       tail_mask=torch.zeros(3, dtype=torch.bool), head_share=0.2)
    with pytest.raises(ValueError, match="inverse_dtype"):
        EASE(info, inverse_dtype="float16")


def test_ease_refuses_a_catalogue_whose_matrices_the_memory_cannot_hold(monkeypatch):
    """The weights (n_items² float32) are checked before they are allocated, the Gram matrix
    before the fit; where the memory cannot be read nothing is refused."""
    from recozoo.models import ease

    info = _info(np.ones((5, 100)))
    monkeypatch.setattr(ease, "available_memory", lambda: 100 * 100 * 4 - 1)
    with pytest.raises(MemoryError, match=r"ease: its item-item weights for 100 items needs "
                                          r"0.0 GiB \(100² x 4 bytes\), but 0.0 GiB are "
                                          r"available. Train itemknn .*data.preprocess.kcore"):
        ease.EASE(info)
    monkeypatch.setattr(ease, "available_memory", lambda: 100 * 100 * 4 + 1)
    model = ease.EASE(info, inverse_dtype="float64")  # the weights fit
    batch = {"user": torch.tensor([0, 1]), "item": torch.tensor([3, 4])}
    with pytest.raises(MemoryError, match=r"fitting: the Gram matrix .*100² x 8 bytes"):
        model.fit(batch)
    monkeypatch.setattr(ease, "available_memory", lambda: None)
    ease.EASE(info).fit(batch)
    from recozoo.runtime import available_memory

    assert available_memory() is None or available_memory() > 0  # read off this machine
