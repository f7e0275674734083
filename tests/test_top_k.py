"""`recozoo.top_k.top_k`: torch.topk's values through group maxima, on rows wide enough, with
equal values in column order."""

from __future__ import annotations

import math

import pytest
import torch

from recozoo.top_k import MIN_COLUMNS, group_size, top_k


def ranked_by_rule(scores: torch.Tensor, k: int) -> torch.return_types.topk:
    """The rule, the slow way: a stable sort of the whole row, largest first."""
    values, columns = torch.sort(scores, dim=1, descending=True, stable=True)
    return torch.return_types.topk((values[:, :k], columns[:, :k]))


def check_top(scores: torch.Tensor, k: int) -> torch.return_types.topk:
    """top_k's result is torch.topk's values, best first, at the columns the rule gives:
    equal values in column order."""
    result = top_k(scores, k)
    assert torch.equal(result.values, torch.topk(scores, k, dim=1).values)
    assert torch.equal(result.indices, ranked_by_rule(scores, k).indices)
    return result


@pytest.mark.parametrize("n_cols", [MIN_COLUMNS, 4_385, 20_011, 40_000])  # 8 and 16 a group
@pytest.mark.parametrize("k", [1, 10, 100])
def test_values_are_torch_topk_values(n_cols: int, k: int) -> None:
    generator = torch.Generator().manual_seed(n_cols + k)
    check_top(torch.randn(6, n_cols, generator=generator), k)


def test_ties_masked_items_and_the_columns_past_the_last_group() -> None:
    """Popularity-like scores (few distinct values, many ties at the k-th place), seen items at
    -inf, and the best items in the columns that fill no whole group."""
    generator = torch.Generator().manual_seed(0)
    n_cols = 3 * MIN_COLUMNS + 5
    assert n_cols % group_size(n_cols) != 0
    scores = torch.randint(0, 7, (5, n_cols), generator=generator).float()
    scores[0, :n_cols - 20] = -math.inf  # a user who has seen all but 20 items
    scores[1, -5:] = 100.0  # the best items lie past the last whole group
    result = check_top(scores, 50)
    assert set(result.indices[1, :5].tolist()) == set(range(n_cols - 5, n_cols))
    assert torch.isinf(result.values[0, 20:]).all()  # what is left is the masked items


@pytest.mark.parametrize("n_cols", [50, MIN_COLUMNS - 1, 2 * MIN_COLUMNS])  # narrow and grouped
def test_equal_scores_in_column_order_and_a_list_is_the_start_of_a_longer_one(n_cols) -> None:
    """torch.topk's choice among equal scores depends on k (the first 20 of a top 21 are not
    always the top 20); top_k's does not: a top 10 is the first 10 of the top 100 of the same
    scores, as a served list is the first items of an evaluated one. Without ties it is
    torch.topk's own result."""
    generator = torch.Generator().manual_seed(n_cols)
    ties = torch.randint(0, 5, (8, n_cols), generator=generator).float()
    longest = check_top(ties, 40)
    for k in (1, 10, 39):
        assert torch.equal(check_top(ties, k).indices, longest.indices[:, :k])
    for dtype in (torch.float64, torch.bfloat16):  # the check for ties has a NumPy path
        assert torch.equal(check_top(ties.to(dtype), 40).indices, longest.indices)
    distinct = torch.randn(8, n_cols, generator=generator)
    assert torch.equal(top_k(distinct, 40).indices, torch.topk(distinct, 40, dim=1).indices)
    # a few runs of equal values among distinct ones (similarities of items with equal counts),
    # rows without any, and a row whose only tie is at the cut
    some = (torch.randn(8, n_cols, generator=generator) * 30).round()
    some[0] = torch.randperm(n_cols, generator=generator).float()
    some[1] = torch.randperm(n_cols, generator=generator).float()
    some[1, some[1].argsort(descending=True)[10]] = n_cols - 10  # the 10th's value again
    for k in (1, 10, 40):
        check_top(some, k)


def test_rows_ranked_a_few_at_a_time_give_the_whole_batchs_result(monkeypatch) -> None:
    """The grouped search ranks its candidates for a few rows at a time (`CANDIDATE_BYTES`): the
    rows of every part, the last one short, come out as one batch's, ties and seen items
    included."""
    from recozoo import top_k as module

    generator = torch.Generator().manual_seed(3)
    n_cols, k = 4_385, 20
    assert module.grouped(torch.empty(1, n_cols), k + 1)
    ties = torch.randint(0, 9, (23, n_cols), generator=generator).float()
    ties[5, :-30] = -math.inf
    distinct = torch.randn(23, n_cols, generator=generator)
    whole = [top_k(scores, k) for scores in (ties, distinct)]
    monkeypatch.setattr(module, "CANDIDATE_BYTES", 5 * (k + 1) * 8 * 8)  # 5 rows a part
    parts = []
    ranked = module._top_of_candidates
    monkeypatch.setattr(module, "_top_of_candidates",
                        lambda scores, *rest: parts.append(len(scores)) or ranked(scores, *rest))
    for scores, expected in zip((ties, distinct), whole):
        parts.clear()
        result = top_k(scores, k)
        assert parts == [5, 5, 5, 5, 3]
        check_top(scores, k)
        assert torch.equal(result.indices, expected.indices)
        assert torch.equal(result.values, expected.values)


def test_a_whole_row_and_more_than_a_row() -> None:
    scores = torch.tensor([[1.0, 3.0, 1.0, 3.0], [0.0, -math.inf, 2.0, -math.inf]])
    assert top_k(scores, 4).indices.tolist() == [[1, 3, 0, 2], [2, 0, 1, 3]]
    assert top_k(scores, 3).indices.tolist() == [[1, 3, 0], [2, 0, 1]]
    with pytest.raises(ValueError, match="k=5 is larger than the row"):
        top_k(scores, 5)


def test_a_view_of_wider_scores() -> None:
    """A non-contiguous matrix (a column slice, a transpose) is ranked as its copy."""
    generator = torch.Generator().manual_seed(2)
    wide = torch.randn(3, 2 * MIN_COLUMNS + 17, generator=generator)
    check_top(wide[:, 3:-7], 20)
    check_top(torch.randn(MIN_COLUMNS + 3, 4, generator=generator).T, 20)


def test_csr_top_k_of_each_row_largest_first_with_ties_by_column() -> None:
    """Rows of a CSR matrix: the k largest values and their columns, largest first; equal
    values in column order; negative values and zero rank as numbers; a short or empty row
    is filled with 0 at column -1."""
    from recozoo.top_k import csr_top_k

    dense = torch.tensor([[0.0, 0.5, 0.2, 0.5, 0.9, 0.0],
                          [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # no entries
                          [-0.3, 0.0, 0.0, 0.0, 0.0, 0.1],
                          [0.0, 0.0, 0.7, 0.0, 0.0, 0.0]])
    matrix = dense.to_sparse_csr()
    values, columns = csr_top_k(matrix.crow_indices(), matrix.col_indices(), matrix.values(), 3)
    assert torch.equal(values, torch.tensor([[0.9, 0.5, 0.5], [0.0, 0.0, 0.0], [0.1, -0.3, 0.0],
                                             [0.7, 0.0, 0.0]]))
    assert columns.tolist() == [[4, 1, 3], [-1, -1, -1], [5, 0, -1], [2, -1, -1]]
    with pytest.raises(ValueError, match="float32"):
        csr_top_k(matrix.crow_indices(), matrix.col_indices(), matrix.values().double(), 3)


def test_csr_top_k_values_are_the_dense_rows_top_k() -> None:
    from recozoo.top_k import csr_top_k

    generator = torch.Generator().manual_seed(4)
    dense = torch.randn(50, 400, generator=generator)
    dense *= torch.rand(50, 400, generator=generator) < 0.3
    dense[dense < 0] = 0.0  # non-negative: the dense top-k's zeros are the sparse fill
    matrix = dense.to_sparse_csr()
    values, columns = csr_top_k(matrix.crow_indices(), matrix.col_indices(), matrix.values(), 20)
    assert torch.equal(values, torch.topk(dense, 20).values)
    found = columns >= 0
    assert torch.equal(dense.gather(1, columns.clamp(min=0))[found], values[found])
