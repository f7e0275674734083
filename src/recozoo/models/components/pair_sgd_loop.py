"""The compiled loop of `recozoo.models.components.pair_sgd` (its own module, imported on first
use: importing Numba and loading the machine code from its cache cost a fraction of a second
that no other model should pay)."""

import numpy as np
from numba import njit


# one signature, compiled when declared (eagerly): the tables, the (B,) users and positives,
# the (B, n) negatives, the positives' weights ((0,) for none), lr, 2 x weight decay
@njit("float64(float32[:, ::1], float32[:, ::1], int64[::1], int64[::1], int64[:, ::1], "
      "float32[::1], float64, float64)", nogil=True, fastmath=True, cache=True)
def bpr_sgd_loop(user_table, item_table, users, positives, negatives, weights, lr, decay):
    n_rows, n_neg = negatives.shape
    dim = user_table.shape[1]
    keep = 1.0 - lr * decay
    loss = 0.0
    for b in range(n_rows):
        u, i = users[b], positives[b]
        rate = lr * weights[i] if weights.shape[0] else lr
        for t in range(n_neg):
            j = negatives[b, t]
            x = 0.0
            for f in range(dim):
                x += user_table[u, f] * (item_table[i, f] - item_table[j, f])
            # -log sigmoid(x), and its slope -sigmoid(-x), without overflow
            if x > 0:
                e = np.exp(-x)
                loss += np.log1p(e)
                slope = e / (1.0 + e)
            else:
                e = np.exp(x)
                loss += np.log1p(e) - x
                slope = 1.0 / (1.0 + e)
            step = rate * slope
            for f in range(dim):
                p, q_i, q_j = user_table[u, f], item_table[i, f], item_table[j, f]
                user_table[u, f] = keep * p + step * (q_i - q_j)
                item_table[i, f] = keep * q_i + step * p
                item_table[j, f] = keep * q_j - step * p
    return loss
