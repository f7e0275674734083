"""`BprLazyAdamStep`: a step of bpr's default solver on sparse tables (its closed-form gradients,
then `recozoo.models.optimizers.LazyAdam`'s update of the rows they touch) in one pass compiled
by Numba (`recozoo.models.components.bpr_loops`).

Done with tensor operations, that step gathers the batch's rows, builds a sparse gradient,
coalesces it (a sort), gathers the moments of its rows and adds three changes back: a dozen
passes over rows scattered through tables larger than the caches at 10^6 interactions and
beyond, each waiting on memory. The loop sums each row's gradient in a scratch row (a row ->
slot map instead of a sort), then reads and writes each distinct row's weights and moments once,
asking for the rows a few triples ahead while it computes the current one. One step of the 10^7
shop's tables (572k users and 302k items of 64, 2,048 triples, one thread; synthetic batches with
popularity-skewed positives): 1.9 ms against 7.0 (docs/benchmarks.md has the whole epochs).
"""

from __future__ import annotations

import numpy as np
import torch

from recozoo.models.components.lookup import loop_table, loop_triples
from recozoo.models.optimizers import LazyAdam


def lazy_adam_kernel():
    """The compiled loops (`recozoo.models.components.bpr_loops`), imported on first use; Numba
    compiles them once (a few seconds) and keeps the machine code in its cache.
    `recozoo.models.bpr.BPR.setup` asks for them before training, so no epoch pays that."""
    from recozoo.models.components import bpr_loops
    return bpr_loops


class BprLazyAdamStep:
    """bpr's optimizer step on its user and item tables, fused: equal to
    `recozoo.models.bpr.BPR.pair_gradients` followed by `LazyAdam.step` up to rounding (the
    gradients of a row are summed in another order), with the optimizer's own state (its moments
    and step count, so checkpoints and the unfused step carry on from each other).

    It holds each table's row -> slot map and the scratch rows of the summed gradients, made at
    the first call (a map is an int32 per table row, -1 where free; the loop frees what it took).
    """

    def __init__(self):
        self._slots: dict[str, np.ndarray] = {}
        self._scratch: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def applies(optimizer: torch.optim.Optimizer, *tables: torch.Tensor) -> bool:
        """Whether the fused step does what ``optimizer.step()`` would: ``optimizer`` is a
        `LazyAdam` itself (a subclass may update otherwise) that does not maximize, and the
        tables are its parameters, contiguous float32 matrices on the CPU."""
        if type(optimizer) is not LazyAdam or any(g.get("maximize", False)
                                                 for g in optimizer.param_groups):
            return False
        params = {id(p) for g in optimizer.param_groups for p in g["params"]}
        return all(id(t) in params and loop_table(t) for t in tables)

    def _slot_map(self, name: str, rows: int) -> np.ndarray:
        slots = self._slots.get(name)
        if slots is None or len(slots) != rows:
            slots = self._slots[name] = np.full(rows, -1, dtype=np.int32)
        return slots

    def _scratch_rows(self, name: str, rows: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        grad, ids = self._scratch.get(name, (None, None))
        if grad is None or len(grad) < rows or grad.shape[1] != dim:
            grad = np.empty((rows, dim), dtype=np.float32)
            ids = np.empty(rows, dtype=np.int64)
            self._scratch[name] = (grad, ids)
        return grad, ids

    @torch.no_grad()
    def __call__(self, optimizer: LazyAdam, user_table: torch.Tensor, item_table: torch.Tensor,
                 users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                 weight_decay: float = 0.0,
                 positive_weight: torch.Tensor | None = None) -> float:
        """One step on the (B,) ``users`` and ``positives`` and (B, n) ``negatives``; returns
        the batch's loss (`recozoo.models.bpr.BPR.loss`'s). A loss that is not finite moves
        nothing and counts no step, so the caller can report it with the tables as they were.
        Requires `applies`."""
        triples = loop_triples(user_table, item_table, users, positives, negatives,
                               positive_weight, "BprLazyAdamStep")
        n_rows, n_neg = negatives.shape
        if not n_rows or not n_neg:
            raise ValueError(f"BprLazyAdamStep: an empty batch ({n_rows} triples, {n_neg} "
                             "negatives each)")
        user_group, item_group = optimizer.group_of(user_table), optimizer.group_of(item_table)
        (beta1, beta2), eps = user_group["betas"], user_group["eps"]
        if (item_group["betas"], item_group["eps"]) != ((beta1, beta2), eps):
            raise ValueError("BprLazyAdamStep: the user and item tables need the same betas "
                             "and eps")
        user_mean, user_square, user_step = optimizer.next_step(user_table, user_group)
        item_mean, item_square, item_step = optimizer.next_step(item_table, item_group)
        dim = user_table.shape[1]
        user_grad, user_rows = self._scratch_rows("user", n_rows, dim)
        item_grad, item_rows = self._scratch_rows("item", n_rows * (1 + n_neg), dim)
        loops = lazy_adam_kernel()
        tables = user_table.detach().numpy(), item_table.detach().numpy()
        slots = (self._slot_map("user", len(user_table)),
                 self._slot_map("item", len(item_table)))
        loss, n_users, n_items = loops.bpr_row_gradients(
            *tables, *triples, float(weight_decay), *slots, user_grad, item_grad, user_rows,
            item_rows)
        if not np.isfinite(loss):
            loops.free_slots(slots[0], user_rows, n_users, slots[1], item_rows, n_items)
            return loss
        loops.lazy_adam_update(
            tables[0], user_mean.numpy(), user_square.numpy(), user_grad, user_rows, slots[0],
            n_users, user_step, tables[1], item_mean.numpy(), item_square.numpy(), item_grad,
            item_rows, slots[1], n_items, item_step, 1.0 - beta1, 1.0 - beta2, eps)
        optimizer.count_step(user_table)
        optimizer.count_step(item_table)
        return loss
