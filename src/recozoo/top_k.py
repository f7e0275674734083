"""The top k of each row of a score matrix: `torch.topk`'s values, found faster on a CPU.

Ranking a catalogue is a top-K over every user's row, and on a CPU `torch.topk` costs about a
nanosecond an element (a partial sort per row), as much as the scores' matrix product at 10^6
interactions. `top_k` first takes the maximum of each group of ``group`` columns, one cheap
streaming pass; the k groups with the largest maxima hold every one of the row's k largest
values (below), so the top k of those ``k x group`` columns is the row's top k. The groups'
own top k is found the same way while they are many.

Why the k best groups suffice: let t be the k-th largest group maximum. The k chosen groups'
maxima are k values >= t, so the row's k-th largest value v is >= t. A value above t lies in a
group whose maximum is above t, and every such group is chosen; if v equals t, the chosen
groups hold the values above t and k maxima >= t, so k values >= v. Either way the candidates
hold the row's k largest values, and `top_k`'s values equal `torch.topk`'s exactly.

Equal scores are ranked by column, the lower first (`top_k`): which of several equal
scores `torch.topk` takes, and in what order, is unspecified and in fact depends on k (the first
20 of a row's top 21 are not always its top 20) and on the kernel; with the rule a list does
not depend on which kernel found the top (by construction: not run on a GPU here), and its
first k items are the row's top k, so a served
top 10 is the first 10 of the evaluated top 100. Popularity scores (counts) tie often: the 100
most popular items of ml-100k have 73 distinct counts.
"""

from __future__ import annotations

import numpy as np
import torch

#: the grouped search runs on rows of at least this many columns ...
MIN_COLUMNS = 2500
#: ... and of at least this many per item of the top k (at least the largest group size, so
#: that a row has k groups). Measured (`top_k` through groups of 8 against `torch.topk`, 1,024
#: rows, 2 threads, medians of 15 alternating, quiet VM, 2026-12-07): the search pays from
#: ~30 columns per item, 0.59-0.83x of the time at 3,000-8,192 columns and k 51-101, and loses
#: below ~25 (1.00-1.03x at 2,048-2,500 columns and k 101; 1.15x at 4,385 and k 201, 1.8x at
#: 1,682 and k 201); at k 11 it was level (0.97-1.02x) from 2,500 to 4,385 columns and 8% slower
#: at 2,048. Until then it started at 8,192 columns and 64 per item.
MIN_COLUMNS_PER_ITEM = 28
#: the grouped search ranks the candidates (k groups' columns a row, as int64 indices) of as
#: many rows at a time as fit in this many bytes: Amazon Scientific's test batch (8,442 users x
#: 4,385 items, k 101, 54 MB of indices at once) 118 ms against 139 (2 MB 128, 512 KB 149);
#: the 10^6 shop's (1,440 x 46,600) level (61 against 60 ms at k 101, 27 against 29 at k 21)
CANDIDATE_BYTES = 1 << 23


def group_size(n_cols: int) -> int:
    """Columns per group. The maxima's pass reads every column, the groups' top k reads
    ``n_cols / group`` of them and the candidates' top k ``k x group``: the larger the row, the
    larger the best group. Measured (2 threads, k 10, 20 and 100): 8 best or within 10% of the
    best from 8,000 to 20,000 columns, 16 at 46,600 and 302,000; 8 is also used from 2,500
    columns, where groups of 4 and 8 were within 10% of each other (measured beside other work,
    not on a quiet machine)."""
    return 8 if n_cols < 32768 else 16


class Groups:
    """A row's columns in groups of `group_size` (group j: columns j, j + n_groups, ...; the
    columns past the last whole group belong to none) and each group's maximum."""

    def __init__(self, scores: torch.Tensor):
        n_rows, n_cols = scores.shape
        self.size = group_size(n_cols)
        self.count = n_cols // self.size
        self.grouped = self.count * self.size  # columns in whole groups
        self.maxima = scores[:, :self.grouped].reshape(n_rows, self.size, self.count).amax(1)
        self.offsets = torch.arange(self.size, device=scores.device) * self.count

    def columns(self, groups: torch.Tensor) -> torch.Tensor:
        """(P, size) the columns of groups (P,)."""
        return groups[:, None] + self.offsets


def grouped(scores: torch.Tensor, k: int) -> bool:
    """Whether `top_k` searches a row through group maxima: on a CPU, rows of at least
    `MIN_COLUMNS` columns and `MIN_COLUMNS_PER_ITEM` per item of the top k."""
    n_cols = scores.shape[1]
    return scores.device.type == "cpu" and n_cols >= max(MIN_COLUMNS, MIN_COLUMNS_PER_ITEM * k)


def top_k(scores: torch.Tensor, k: int) -> torch.return_types.topk:
    """The k largest values of each row of a 2-D matrix and their columns, largest first, equal
    values in column order: ``torch.topk(scores, k, dim=1)``'s values, and its indices too
    wherever no two of a row's k + 1 largest values are equal. Rows of at least `MIN_COLUMNS`
    columns and `MIN_COLUMNS_PER_ITEM` per item are searched through group maxima on a CPU;
    else, and on other devices (where it was not measured), by `torch.topk`. The rule does not
    cover NaN scores.

    The top k + 1 is found first: where its last two values differ and no two of the first k
    are equal, it is the result as found; only rows with ties are ranked again
    (`_order_ties`), so scores without ties cost a top k + 1 and one comparison of (B, k)
    values.

    2 threads (``OMP_WAIT_POLICY=PASSIVE``), medians of 9, ms, grouped against `torch.topk`, at
    k 10 / 20 / 100: 1,024 x 8,192 6.6 / 10.2 / 17.2 against 9.0 / 13.6 / 25.6; 1,024 x 46,600
    (the 10^6 shop's catalogue) 19.7 / 23.4 / 52.0 against 57.1 / 57.9 / 71.1; 512 x 302,000
    (10^7) 47.6 / 51.9 / 74.1 against 150.3 / 150.0 / 176.5.
    """
    n_cols = scores.shape[1]
    if k > n_cols:
        raise ValueError(f"top_k: k={k} is larger than the row ({n_cols} columns)")
    if k == n_cols:  # every column: a stable sort is the rule
        values, columns = torch.sort(scores, dim=1, descending=True, stable=True)
        return torch.return_types.topk((values, columns))
    groups = Groups(scores) if grouped(scores, k + 1) else None
    values, columns = _top_any_ties(scores, k + 1, groups)
    equal = _equal_neighbours(values)  # (B, k): column k - 1 is the cut
    if equal is None:
        return torch.return_types.topk((values[:, :k], columns[:, :k]))
    return _order_ties(scores, values, columns, equal, groups)


def _equal_neighbours(values: torch.Tensor) -> torch.Tensor | None:
    """(B, n - 1) whether each value of a row equals the next, or None where none does. On a
    CPU in NumPy (the result shares its memory): torch's comparison and reduction, two parallel
    kernels, wake threads that sleep between them (``OMP_WAIT_POLICY=PASSIVE``): 943 x 101
    values 0.21 ms against 0.03."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        array = values.detach().numpy()
        equal = np.equal(array[:, 1:], array[:, :-1])
        return torch.from_numpy(equal) if equal.any() else None
    equal = values[:, 1:] == values[:, :-1]
    return equal if bool(equal.any()) else None


def _top_any_ties(scores: torch.Tensor, k: int, groups: Groups | None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The row's k largest values, sorted, and columns holding them; which of equal values at
    the k-th place are taken, and their order, are the kernel's choice.

    Through groups: the k groups with the largest maxima hold the row's k best values (the
    module's proof), so the top k of their columns and of the columns in no group is the
    row's; the groups' own top k is found the same way while they are many."""
    if groups is None:
        return torch.topk(scores, k, dim=1)
    inner = Groups(groups.maxima) if grouped(groups.maxima, k) else None
    chosen = _top_any_ties(groups.maxima, k, inner)[1]  # (B, k)
    step = max(1, CANDIDATE_BYTES // (k * groups.size * 8))  # rows whose candidates fit
    if step >= len(scores):
        return _top_of_candidates(scores, chosen, groups)
    parts = [_top_of_candidates(scores[start:start + step], chosen[start:start + step], groups)
             for start in range(0, len(scores), step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _top_of_candidates(scores: torch.Tensor, chosen: torch.Tensor, groups: Groups,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The top k of the columns of the groups ``chosen`` (B, k) for each row, and of the
    columns in no group (`_top_any_ties`)."""
    n_rows, k = chosen.shape
    columns = groups.columns(chosen.reshape(-1)).view(n_rows, k, groups.size).flatten(1)
    if groups.grouped < scores.shape[1]:
        rest = torch.arange(groups.grouped, scores.shape[1], device=scores.device)
        columns = torch.cat([columns, rest.expand(n_rows, -1)], dim=1)
    values, at = torch.topk(scores.gather(1, columns), k, dim=1)
    return values, columns.gather(1, at)


def _order_ties(scores: torch.Tensor, values: torch.Tensor, columns: torch.Tensor,
                equal: torch.Tensor, groups: Groups | None) -> torch.return_types.topk:
    """`top_k`'s result from a top k + 1 whose ``equal`` (B, k: each value equals the next)
    shows ties. Where the k-th and (k+1)-th values are equal, the k-th value's places go to
    the lowest of the row's columns that hold it (`_columns_holding`: for those rows only);
    then the rows with equal values in their top k put them in column order."""
    k = equal.shape[1]
    values, columns = values[:, :k], columns[:, :k].clone()
    cut = equal[:, k - 1]
    if cut.any():
        rows = cut.nonzero().squeeze(1)
        kth = values[rows, k - 1]
        above = (values[rows] > kth[:, None]).sum(1)  # the first places, which stay
        at, held = _columns_holding(scores, rows, kth, groups)  # by row, then column
        counts = torch.bincount(at, minlength=len(rows))
        rank = torch.arange(len(at), device=at.device) - (counts.cumsum(0) - counts)[at]
        kept = rank < (k - above)[at]  # the lowest columns fill the places left
        columns[rows[at[kept]], above[at[kept]] + rank[kept]] = held[kept]
    tied = equal[:, :k - 1].any(1) | cut
    rows = tied.nonzero().squeeze(1)
    run = torch.ones(len(rows), k, dtype=torch.bool, device=values.device)
    run[:, 1:] = ~equal[rows, :k - 1]  # where a run of equal values starts
    places = torch.arange(k, device=values.device).expand(len(rows), -1)
    start = torch.where(run, places, 0).cummax(1).values  # each place's run's first place
    order = (start * scores.shape[1] + columns[rows]).argsort(1)  # runs in place, by column
    columns[rows] = columns[rows].gather(1, order)  # the values stay: equal ones swapped
    return torch.return_types.topk((values, columns))


def _columns_holding(scores: torch.Tensor, rows: torch.Tensor, value: torch.Tensor,
                     groups: Groups | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (place in ``rows``, column) where row ``rows[i]`` of ``scores`` holds ``value[i]``,
    ordered by row, then column. Through groups only the groups whose maximum reaches the
    value and the columns in no group are read (popularity scores at 1,024 x 46,600: ~2,800 of
    46,600 columns a row, though they lie on most of the row's cache lines)."""
    if groups is None:
        return (scores[rows] == value[:, None]).nonzero(as_tuple=True)
    at, group = (groups.maxima[rows] >= value[:, None]).nonzero(as_tuple=True)
    columns = groups.columns(group)  # (P, size)
    found = scores[rows[at, None], columns] == value[at, None]
    at, held = at[:, None].expand_as(columns)[found], columns[found]
    if groups.grouped < scores.shape[1]:
        rest_at, rest = (scores[rows, groups.grouped:] == value[:, None]).nonzero(as_tuple=True)
        at, held = torch.cat([at, rest_at]), torch.cat([held, rest + groups.grouped])
    order = (at * scores.shape[1] + held).argsort()
    return at[order], held[order]


def csr_top_k(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, k: int,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values of each row of a CSR matrix and their columns, largest first, as
    (rows, k) values and columns; a row with fewer than k entries is filled with value 0 and
    column -1. Among equal values the entry stored first comes first (the lower column in a
    row whose columns ascend), so the same input always gives the same result. ``crow``
    (rows + 1,), ``col`` and float32 ``values`` (nnz,), no NaN. O(nnz log nnz), nothing of the
    rows' full width.

    One sort orders the entries by row, then value descending: an int64 key of the row and the
    value's bits (a float32's bits, sign-folded, order as the floats do), rather than a sort
    by value then a stable sort by row: the 10^6 shop's ItemKNN fit (7.7 M entries in 46
    blocks) sorted in 0.26 s against 0.79."""
    if values.dtype != torch.float32:
        raise ValueError(f"csr_top_k takes float32 values, got {values.dtype}")
    n_rows = len(crow) - 1
    row = torch.repeat_interleave(torch.arange(n_rows, device=col.device), crow.diff())
    bits = values.view(torch.int32).long()
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # ascends as the values do
    order = torch.argsort((row << 33) - ordered, stable=True)  # by row, then value descending
    row = row[order]
    rank = torch.arange(len(order), device=col.device) - crow[row]  # place within the row
    taken = rank < k
    row, rank, order = row[taken], rank[taken], order[taken]
    top_values = values.new_zeros(n_rows, k)
    top_columns = torch.full((n_rows, k), -1, dtype=torch.long, device=col.device)
    top_values[row, rank] = values[order]
    top_columns[row, rank] = col[order]
    return top_values, top_columns
