"""The compiled search of `recozoo.data.datamodule.UserItems.contains`, in a module of its own,
imported on first use (importing Numba costs a fraction of a second that data without it
should not pay)."""

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def rows_contain(indptr, items, users, queries):
    """Whether each ``queries[q]`` is among ``items[indptr[users[q]]:indptr[users[q] + 1]]``
    (each user's items sorted): one binary search per query, which stops at its own user's
    length, where the vectorised search took every query through as many halvings as the
    longest user needs."""
    found = np.zeros(len(users), dtype=np.bool_)
    for q in range(len(users)):
        low, end = indptr[users[q]], indptr[users[q] + 1]
        high, item = end, queries[q]
        while low < high:
            middle = (low + high) >> 1
            if items[middle] < item:
                low = middle + 1
            else:
                high = middle
        found[q] = low < end and items[low] == item
    return found
