"""The compiled loops of bpr's two solvers (`recozoo.models.components.pair_sgd` and
`recozoo.models.components.bpr_lazy_adam`), in a module of their own, imported on first use:
importing Numba and loading the machine code from its cache cost a fraction of a second that no
other model should pay.

At 10^6 interactions and beyond the tables and Adam's moments are larger than the caches, and a
step reads a few thousand random rows of each: the loops ask for the rows of the triples
`PREFETCH_AHEAD` ahead (`prefetch_row`) while they compute the current one, so those reads
overlap instead of waiting one after the other.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: how many triples (or rows) ahead the loops prefetch. One step of the 10^7 shop (572k users,
#: 302k items, 2,048 triples; synthetic, one thread), measured on a first form of the lazy Adam
#: loops (Python's error model, the update prefetching the moments only): 2 / 4 / 8 / 16 / 32
#: ahead 3.69 / 3.70 / 3.68 / 3.83 / 3.82 ms, none 5.1; on today's form 4 / 8 / 16 ahead 3.12 /
#: 3.03 / 3.06 ms before NumPy's error model, 1.9 with it
PREFETCH_AHEAD = 8
#: float32 values in a 64-byte cache line
LINE = 16
#: LLVM's fast-math flags but those that assume no NaN or infinity (``nnan``, ``ninf``): with
#: them a test of the loss for NaN would be compiled away
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


@intrinsic
def _prefetch(typingctx, array, row, column):
    """``llvm.prefetch`` (for a write, kept in every cache level) of ``array[row, column]``'s
    cache line, or ``array[row]``'s for a 1-D array (``column`` then unused): a hint that costs
    no wait."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array_value = context.make_array(array_type)(context, builder, args[0])
        indices = [args[1], args[2]] if array_type.ndim == 2 else [args[1]]
        pointer = cgutils.get_item_pointer(context, builder, array_type, array_value, indices,
                                           wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32]),
            "llvm.prefetch.p0i8")
        builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(int32, 1),
                                ir.Constant(int32, 3), ir.Constant(int32, 1)])
        return context.get_dummy_value()
    return types.void(array, row, column), codegen


@njit(inline="always")
def prefetch_row(table, row):
    """Prefetch every cache line of the row ``table[row]`` of a 2-D table."""
    for column in range(0, table.shape[1], LINE):
        _prefetch(table, row, column)


@njit(inline="always")
def prefetch_entry(array, index):
    """Prefetch the cache line of ``array[index]`` (1-D)."""
    _prefetch(array, index, 0)


@njit(inline="always")
def prefetch_triple(user_table, item_table, users, positives, negatives, b):
    """Prefetch the table rows of triple ``b``: its user's, its positive's and its negatives'."""
    prefetch_row(user_table, users[b])
    prefetch_row(item_table, positives[b])
    for t in range(negatives.shape[1]):
        prefetch_row(item_table, negatives[b, t])


@njit(inline="always")
def softplus_and_slope(x):
    """``-log sigmoid(x)`` and ``sigmoid(-x)``, without overflow."""
    if x > 0:
        e = np.exp(-x)
        return np.log1p(e), e / (1.0 + e)
    e = np.exp(x)
    return np.log1p(e) - x, 1.0 / (1.0 + e)


# one signature, compiled when declared (eagerly): the tables, the (B,) users and positives,
# the (B, n) negatives, the positives' weights ((0,) for none), lr, 2 x weight decay
@njit("float64(float32[:, ::1], float32[:, ::1], int64[::1], int64[::1], int64[:, ::1], "
      "float32[::1], float64, float64)", nogil=True, fastmath=FASTMATH, cache=True,
      error_model="numpy")
def bpr_sgd_loop(user_table, item_table, users, positives, negatives, weights, lr, decay):
    n_rows, n_neg = negatives.shape
    dim = user_table.shape[1]
    keep = 1.0 - lr * decay
    loss = 0.0
    for b in range(n_rows):
        if b + PREFETCH_AHEAD < n_rows:
            prefetch_triple(user_table, item_table, users, positives, negatives,
                            b + PREFETCH_AHEAD)
        u, i = users[b], positives[b]
        rate = lr * weights[i] if weights.shape[0] else lr
        for t in range(n_neg):
            j = negatives[b, t]
            x = 0.0
            for f in range(dim):
                x += user_table[u, f] * (item_table[i, f] - item_table[j, f])
            pair_loss, slope = softplus_and_slope(x)
            loss += pair_loss
            step = rate * slope
            for f in range(dim):
                p, q_i, q_j = user_table[u, f], item_table[i, f], item_table[j, f]
                user_table[u, f] = keep * p + step * (q_i - q_j)
                item_table[i, f] = keep * q_i + step * p
                item_table[j, f] = keep * q_j - step * p
    return loss


@njit(inline="always")
def _take_slot(slots, rows, grad, row, count):
    """The scratch row of table row ``row`` in ``grad``: the one it has, or the next free one
    (zeroed, ``row`` recorded in ``rows``); returns it and the new count."""
    slot = slots[row]
    if slot < 0:
        slot = count
        slots[row] = slot
        rows[slot] = row
        for f in range(grad.shape[1]):
            grad[slot, f] = 0.0
        count += 1
    return slot, count


@njit(nogil=True, fastmath=FASTMATH, error_model="numpy")
def _lazy_adam_rows(table, mean, square, grad, rows, slots, count, step_size, beta1_complement,
                    beta2_complement, eps):
    """Lazy Adam's update of the ``count`` rows ``rows[:count]`` whose summed gradients are
    ``grad[:count]`` (`recozoo.models.optimizers.LazyAdam`'s arithmetic), freeing their slots."""
    dim = table.shape[1]
    for k in range(count):
        if k + PREFETCH_AHEAD < count:
            ahead = rows[k + PREFETCH_AHEAD]
            prefetch_row(mean, ahead)
            prefetch_row(square, ahead)
            prefetch_row(table, ahead)
        row = rows[k]
        slots[row] = -1
        for f in range(dim):
            g = grad[k, f]
            m = mean[row, f] + (g - mean[row, f]) * beta1_complement
            v = square[row, f] + (g * g - square[row, f]) * beta2_complement
            mean[row, f] = m
            square[row, f] = v
            table[row, f] -= step_size * (m / (math.sqrt(v) + eps))


# compiled when declared (eagerly), one signature each. The gradients: the user table, the item
# table; the (B,) users and positives, the (B, n) negatives, the positives' weights ((0,) for
# none); the weight decay; each table's row -> slot map (-1: none), its scratch gradient rows
# and their row ids. Returns the loss and the rows taken in each table.
@njit("Tuple((float64, int64, int64))(float32[:, ::1], float32[:, ::1], int64[::1], int64[::1], "
      "int64[:, ::1], float32[::1], float64, int32[::1], int32[::1], float32[:, ::1], "
      "float32[:, ::1], int64[::1], int64[::1])",
      nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def bpr_row_gradients(user_table, item_table, users, positives, negatives, weights, weight_decay,
                      user_slots, item_slots, user_grad, item_grad, user_rows, item_rows):
    """bpr's loss and its gradients at the tables' current weights (`recozoo.models.bpr.BPR.
    pair_gradients`' closed form), each row's summed in a scratch row: the first ``n`` entries of
    ``user_rows``/``item_rows`` name the table rows of the first ``n`` scratch rows, and the
    slot maps point from those rows to their scratch rows until `lazy_adam_update` or
    `free_slots` frees them."""
    n_rows, n_neg = negatives.shape
    dim = user_table.shape[1]
    scale = 1.0 / (n_rows * n_neg)  # a pair's share of the mean
    decay = 2.0 * weight_decay / n_rows  # a looked-up row's L2 gradient per occurrence
    loss = 0.0
    squares = 0.0
    n_users = 0
    n_items = 0
    for b in range(n_rows):
        if b + PREFETCH_AHEAD < n_rows:
            ahead = b + PREFETCH_AHEAD
            prefetch_triple(user_table, item_table, users, positives, negatives, ahead)
            prefetch_entry(user_slots, users[ahead])
            prefetch_entry(item_slots, positives[ahead])
            for t in range(n_neg):
                prefetch_entry(item_slots, negatives[ahead, t])
        u, i = users[b], positives[b]
        weight = scale * weights[i] if weights.shape[0] else scale
        su, n_users = _take_slot(user_slots, user_rows, user_grad, u, n_users)
        si, n_items = _take_slot(item_slots, item_rows, item_grad, i, n_items)
        if weight_decay != 0.0:
            for f in range(dim):
                p, q = user_table[u, f], item_table[i, f]
                squares += p * p + q * q
                user_grad[su, f] += decay * p
                item_grad[si, f] += decay * q
        for t in range(n_neg):
            j = negatives[b, t]
            sj, n_items = _take_slot(item_slots, item_rows, item_grad, j, n_items)
            x = 0.0
            for f in range(dim):
                x += user_table[u, f] * (item_table[i, f] - item_table[j, f])
            pair_loss, slope = softplus_and_slope(x)
            loss += weight * pair_loss
            s = weight * slope  # -dloss/dx
            for f in range(dim):
                p = user_table[u, f]
                user_grad[su, f] -= s * (item_table[i, f] - item_table[j, f])
                item_grad[si, f] -= s * p
                item_grad[sj, f] += s * p
            if weight_decay != 0.0:
                for f in range(dim):
                    q = item_table[j, f]
                    squares += q * q
                    item_grad[sj, f] += decay * q
    return loss + weight_decay * squares / n_rows, n_users, n_items


# the user table and its two moments, its scratch gradient rows, their row ids, its slot map,
# the rows taken, its step size; the same for the item table; 1 - beta1, 1 - beta2, eps
@njit("void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], int64[::1], "
      "int32[::1], int64, float32, float32[:, ::1], float32[:, ::1], float32[:, ::1], "
      "float32[:, ::1], int64[::1], int32[::1], int64, float32, float32, float32, float32)",
      nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def lazy_adam_update(user_table, user_mean, user_square, user_grad, user_rows, user_slots,
                     n_users, user_step_size, item_table, item_mean, item_square, item_grad,
                     item_rows, item_slots, n_items, item_step_size, beta1_complement,
                     beta2_complement, eps):
    """LazyAdam's step of both tables from `bpr_row_gradients`' scratch rows; frees the slots."""
    _lazy_adam_rows(user_table, user_mean, user_square, user_grad, user_rows, user_slots, n_users,
                    user_step_size, beta1_complement, beta2_complement, eps)
    _lazy_adam_rows(item_table, item_mean, item_square, item_grad, item_rows, item_slots, n_items,
                    item_step_size, beta1_complement, beta2_complement, eps)


@njit("void(int32[::1], int64[::1], int64, int32[::1], int64[::1], int64)", nogil=True,
      cache=True)
def free_slots(user_slots, user_rows, n_users, item_slots, item_rows, n_items):
    """Free the slots `bpr_row_gradients` took, without an update."""
    for k in range(n_users):
        user_slots[user_rows[k]] = -1
    for k in range(n_items):
        item_slots[item_rows[k]] = -1
