"""The compiled tie rule of `recozoo.top_k.top_k`, in a module of its own, imported on first use
(only score matrices with ties need it, and importing Numba costs a fraction of a second)."""

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def order_ties(values, columns, scores, maxima, group_size, k):
    """The columns (B, k) of each row's top k with equal values in column order, the lower
    first, from its top k + 1 as ``values`` (B, k + 1), largest first, and ``columns``, equal
    values in any order.

    Where a row's k-th and (k+1)-th values are equal, the places of the k-th value go to the
    lowest columns of ``scores``' row that hold it: every column of the row is read, or, with
    group ``maxima`` (B, n_groups, n_groups > 0; group j holds columns j + i n_groups for i
    below ``group_size``, and the columns past the last group belong to none), those of the
    groups whose maximum reaches the value and the columns past the last group. Then each run
    of equal values is put in column order. One pass a row, in place of some twenty small
    tensor operations, each of which woke the sleeping OpenMP threads. Reading the groups that
    reach a tied value reads most of a wide row from memory (popularity at 1,024 x 46,600: ~2,800
    of 46,600 columns a row, one cache line each): ~15 ms of such a top 100's 55."""
    n_rows, n_cols = scores.shape
    n_groups = maxima.shape[1]
    result = columns[:, :k].copy()
    found = np.empty(n_cols, dtype=np.int64)
    reaching = np.empty(n_groups, dtype=np.int64)
    for row in range(n_rows):
        kth = values[row, k - 1]
        if kth == values[row, k]:  # the k-th value also lies outside the top k
            above = 0
            while values[row, above] > kth:  # the places that stay
                above += 1
            n_found = 0
            if n_groups == 0:  # every column, in order, until the places are filled
                for column in range(n_cols):
                    if scores[row, column] == kth:
                        found[n_found] = column
                        n_found += 1
                        if above + n_found == k:
                            break
            else:
                n_reaching = 0
                for group in range(n_groups):
                    if maxima[row, group] >= kth:
                        reaching[n_reaching] = group
                        n_reaching += 1
                for i in range(group_size):  # the row read forward, not group by group
                    for g in range(n_reaching):
                        column = reaching[g] + i * n_groups
                        if scores[row, column] == kth:
                            found[n_found] = column
                            n_found += 1
                for column in range(n_groups * group_size, n_cols):
                    if scores[row, column] == kth:
                        found[n_found] = column
                        n_found += 1
                found[:n_found].sort()
            result[row, above:k] = found[:k - above]
        start = 0
        for place in range(1, k + 1):  # each run of equal values in column order
            if place < k and values[row, place] == values[row, start]:
                continue
            if place - start > 16:
                result[row, start:place].sort()
            else:  # insertion sort: the runs are mostly short, and a call costs more
                for i in range(start + 1, place):
                    column = result[row, i]
                    at = i
                    while at > start and result[row, at - 1] > column:
                        result[row, at] = result[row, at - 1]
                        at -= 1
                    result[row, at] = column
            start = place
    return result
