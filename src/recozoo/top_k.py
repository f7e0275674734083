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
hold the row's k largest values, and `top_k`'s values equal `torch.topk`'s exactly. Among equal
scores at the k-th place, which item is taken may differ from `torch.topk`'s choice (that is
unspecified there too); the same input always gives the same result.
"""

from __future__ import annotations

import torch

#: the grouped search runs on rows of at least this many columns (below, `torch.topk` was as
#: fast or faster: 1,024 x 3,000 at k 10, 20 and 100, 2 threads) ...
MIN_COLUMNS = 8192
#: ... and of at least this many per item of the top k
MIN_COLUMNS_PER_ITEM = 64


def group_size(n_cols: int) -> int:
    """Columns per group. The maxima's pass reads every column, the groups' top k reads
    ``n_cols / group`` of them and the candidates' top k ``k x group``: the larger the row, the
    larger the best group. Measured (2 threads, k 10, 20 and 100): 8 best or within 10% of the
    best from 8,000 to 20,000 columns, 16 at 46,600 and 302,000."""
    return 8 if n_cols < 32768 else 16


def top_k(scores: torch.Tensor, k: int, sorted: bool = True) -> torch.return_types.topk:
    """``torch.topk(scores, k, dim=1, sorted=sorted)``'s values and indices of a 2-D matrix,
    found through group maxima on a CPU where a row has at least `MIN_COLUMNS` columns and
    `MIN_COLUMNS_PER_ITEM` per item of the top k; else, and on other devices (where it was not
    measured), `torch.topk` itself.

    2 threads (``OMP_WAIT_POLICY=PASSIVE``), medians of 9, ms against `torch.topk`'s, at k 10 /
    20 / 100: 1,024 x 8,192 6.6 / 10.2 / 17.2 against 9.0 / 13.6 / 25.6; 1,024 x 46,600 (the 10^6
    shop's catalogue) 19.7 / 23.4 / 52.0 against 57.1 / 57.9 / 71.1; 512 x 302,000 (10^7)
    47.6 / 51.9 / 74.1 against 150.3 / 150.0 / 176.5.
    """
    n_rows, n_cols = scores.shape
    if scores.device.type != "cpu" or n_cols < max(MIN_COLUMNS, MIN_COLUMNS_PER_ITEM * k):
        return torch.topk(scores, k, dim=1, sorted=sorted)
    group = group_size(n_cols)
    n_groups = n_cols // group
    grouped = n_groups * group  # group j: columns j, j + n_groups, ...; the rest are candidates
    maxima = scores[:, :grouped].reshape(n_rows, group, n_groups).amax(1)  # (B, n_groups)
    groups = top_k(maxima, k, sorted=False).indices  # (B, k)
    offsets = torch.arange(group, device=scores.device) * n_groups
    columns = (groups[:, None, :] + offsets[None, :, None]).view(n_rows, group * k)
    if grouped < n_cols:
        rest = torch.arange(grouped, n_cols, device=scores.device)
        columns = torch.cat([columns, rest.expand(n_rows, -1)], dim=1)
    values, at = torch.topk(scores.gather(1, columns), k, dim=1, sorted=sorted)
    return torch.return_types.topk((values, columns.gather(1, at)))


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
