"""EASE: Embarrassingly Shallow Autoencoders for sparse data.

Steck, WWW 2019. A closed-form item-item weight matrix ``B`` minimising
``|X - XB|^2 + reg |B|^2`` subject to ``diag(B) = 0``:
``P = (X^T X + reg I)^-1``, ``B = -P / diag(P)`` (column-wise), ``diag(B) = 0``.
Scores are ``x_u B``. Memory and time are O(n_items^2) and O(n_items^3): suited to catalogues up
to a few tens of thousands of items; a catalogue whose matrices the memory left cannot hold is
refused with what to do instead (`require_memory`).

The L2 weight that suits a dataset varies tenfold (Optuna's bests on validation: the shop 58,
Online Retail 65, Scientific 42, ml-100k 365), so by default it is chosen on validation after
the fit (``reg_grid``, `EASE.choose_on_validation`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from recozoo.data.contracts import column_blocks
from recozoo.data.datamodule import DatasetInfo, EvalBatch
from recozoo.models.base import ClosedFormRecommender
from recozoo.models.components.grid_climb import climb
from recozoo.models.components.interaction_matrix import item_cooccurrence, mirror_upper_triangle
from recozoo.runtime import available_memory, openmp_waits_passively

log = logging.getLogger(__name__)


def spd_inverse(matrix: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """The inverse of a symmetric positive definite matrix, from its Cholesky factor. Only
    ``matrix``'s upper triangle is read (its strict lower one may hold anything, such as an
    unmirrored `item_cooccurrence`); the inverse is whole.

    Both ways are LAPACK's ``potrf`` + ``potri``; they differ in whose threads run them. torch's
    (MKL) runs on OpenMP threads, which under ``OMP_WAIT_POLICY=PASSIVE`` (recozoo's default,
    `recozoo.runtime`) sleep between the inverse's many short parallel regions; SciPy's
    (OpenBLAS) keeps its own threads. 1,682 x 1,682 (ml-100k), 2 threads: 87-114 ms through
    SciPy against 150-155 ms under PASSIVE, but 146 against 111 ms under OpenMP's default
    policy; EASE's whole ml-100k fit, inverting in its Gram matrix, 0.149 s against 0.239 s
    (PASSIVE, medians of 8 alternating fits). So SciPy inverts on the CPU under PASSIVE, torch
    otherwise (another policy, CUDA).

    Args:
        matrix: (n, n) symmetric positive definite, float32 or float64.
        overwrite: ``matrix`` is a scratch buffer the inverse may be computed in (its content
            is lost), which saves a copy; False: it is left as it was.
    """
    if matrix.device.type != "cpu" or not openmp_waits_passively():
        factor, info = torch.linalg.cholesky_ex(matrix, upper=True)  # reads the upper triangle
        if int(info) == 0:
            return torch.cholesky_inverse(factor, upper=True)
    else:
        from scipy.linalg import lapack

        work = (matrix if overwrite and matrix.is_contiguous()
                else matrix.clone(memory_format=torch.contiguous_format))
        # row order transposed is LAPACK's column order, and the matrix is symmetric: the same
        # matrix without a copy; LAPACK's lower triangle is `work`'s upper one
        a = work.numpy().T
        potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a,))
        factor, info = potrf(a, lower=True, clean=False, overwrite_a=True)
        if info == 0:
            inverse, info = potri(factor, lower=True, overwrite_c=True)
        if info == 0:
            if not np.may_share_memory(inverse, a):  # SciPy copied after all: read its result
                work = torch.from_numpy(np.ascontiguousarray(inverse.T))
            return mirror_upper_triangle(work)  # potri fills one triangle only
    raise ValueError(f"the matrix to invert is not positive definite (Cholesky failed at row "
                     f"{int(info)}); raise model.reg_weight")


def require_memory(n_items: int, itemsize: int, what: str) -> None:
    """Refuse an n_items x n_items matrix of ``itemsize``-byte numbers that the memory left to
    the process (`recozoo.runtime.available_memory`) cannot hold, with what to do instead; a
    catalogue of 10^5 items needs 40 GB a float32 matrix, and the allocation would otherwise end
    the process (the kernel's out-of-memory kill) with no message."""
    needed, available = n_items * n_items * itemsize, available_memory()
    if available is not None and needed > available:
        raise MemoryError(
            f"ease: {what} for {n_items:,} items needs {needed / 2**30:.1f} GiB ({n_items:,}² x "
            f"{itemsize} bytes), but {available / 2**30:.1f} GiB are available. Train itemknn "
            "(memory O(items x k)), or shrink the catalogue: data.preprocess.kcore=<k> drops "
            "items (and users) with fewer than k interactions")


class EASE(ClosedFormRecommender):
    """Closed-form linear item-item model (fits in one step).

    Args:
        reg_weight: the L2 weight (lambda in the paper) of the fit, and where the choice on
            validation starts.
        reg_grid: L2 weights to choose from on validation after the fit, refitting outward
            from ``reg_weight`` while validation rises (`climb`: 2-5 fits, not one per weight);
            null: ``reg_weight`` stays.
        inverse_dtype: "float64" or "float32", the precision of the inverse. float32 is about
            twice as fast; the regulariser keeps the matrix well conditioned.
    """

    scores_new_users = True

    def __init__(self, info: DatasetInfo, reg_weight: float = 150.0,
                 reg_grid: Sequence[float] | None = None, inverse_dtype: str = "float32",
                 **kwargs):
        super().__init__(info, **kwargs)
        if reg_weight <= 0:
            raise ValueError(f"ease reg_weight must be > 0, got {reg_weight}")
        if reg_grid is not None and (len(reg_grid) == 0 or min(reg_grid) <= 0):
            raise ValueError(f"ease reg_grid must hold L2 weights > 0 (or be null), got "
                             f"{list(reg_grid)}")
        if inverse_dtype not in ("float32", "float64"):
            raise ValueError(f"ease inverse_dtype must be float32 or float64, got {inverse_dtype!r}")
        self.precision_dtype = getattr(torch, inverse_dtype)
        self.reg_weight = float(reg_weight)
        self.reg_grid = (sorted({float(r) for r in reg_grid} | {self.reg_weight})
                         if reg_grid is not None else None)
        require_memory(info.n_items, 4, "its item-item weights")
        self.register_buffer("item_weights", torch.zeros(info.n_items, info.n_items))
        # the L2 weight the item weights were fitted with (the choice on validation's, if any)
        self.register_buffer("fitted_reg_weight",
                             torch.tensor(self.reg_weight, dtype=torch.float64))
        self._pairs: tuple[torch.Tensor, torch.Tensor] | None = None  # kept for refits

    def fit(self, batch: dict[str, torch.Tensor]) -> None:
        if self.reg_grid is not None:  # O(interactions), freed once the choice is made
            self._pairs = (batch["user"], batch["item"])
        self.fit_pairs(batch["user"], batch["item"], self.reg_weight)

    def fit_pairs(self, user: torch.Tensor, item: torch.Tensor, reg_weight: float) -> None:
        """Fit the item weights to the (user, item) training pairs with L2 weight
        ``reg_weight``."""
        # In float32 the Gram matrix is counted in the weights buffer and inverted there, so the
        # fit needs no second n_items^2 matrix; in float64 it is one more, freed after the fit.
        # Its upper triangle: the inverse reads no other (mirroring takes 4-12 ms on ml-100k)
        in_place = self.precision_dtype == torch.float32 and self.item_weights.is_contiguous()
        if not in_place:
            require_memory(self.n_items, self.precision_dtype.itemsize, "fitting: the Gram matrix")
        gram = item_cooccurrence(user, item, self.n_users, self.n_items, upper_only=True,
                                 out=self.item_weights if in_place else None)
        gram = gram.to(self.precision_dtype)  # (n_items, n_items)
        gram.diagonal().add_(reg_weight)
        # positive definite (reg_weight > 0), so a Cholesky inverse, ~2x cheaper than a general
        # one; the Gram matrix is scratch
        precision = spd_inverse(gram, overwrite=True)
        diagonal = -torch.diag(precision)[None, :]  # a copy, before the inverse is written over
        weights = torch.div(precision, diagonal, out=precision)  # in place: the inverse is scratch
        weights.fill_diagonal_(0.0)
        # the weights buffer itself in place, else the buffer becomes the result (float32: no
        # copy of the n_items^2 matrix)
        self.item_weights = weights.to(torch.float32)
        self.fitted_reg_weight.fill_(reg_weight)

    def choose_on_validation(self, validate: Callable[[], float]) -> dict[str, Any]:
        """With ``reg_grid``: the L2 weight of the grid with the best validation value, found
        by refitting outward from ``reg_weight`` (`climb`); ``reg_weight`` unless another is
        strictly better. Needs the training pairs of this process's fit: a
        model loaded from a checkpoint keeps the weights it was saved with. Each refit builds
        the Gram matrix again from the pairs rather than keeping a copy: a second n_items²
        matrix beside the weights and the one being inverted is what limits the catalogue."""
        if self.reg_grid is None:
            return {}
        if self._pairs is None:
            log.warning("ease: reg_grid is set, but this model was not fitted in this process "
                        "(loaded from a checkpoint): its L2 weight %g stays",
                        float(self.fitted_reg_weight))
            return {}
        def value(reg_weight: float) -> float:  # the validation value, refitted if need be
            if float(self.fitted_reg_weight) != reg_weight:
                self.fit_pairs(*self._pairs, reg_weight)
            return validate()

        chosen, values = climb(self.reg_grid, self.reg_weight, value)
        if float(self.fitted_reg_weight) != chosen:
            self.fit_pairs(*self._pairs, chosen)
        self._pairs = None
        log.info("ease: L2 weight %g chosen on validation (value at %s: %s)", chosen,
                 "/".join(f"{w:g}" for w in sorted(values)),
                 "/".join(f"{values[w]:.4f}" for w in sorted(values)))
        return {"reg_weight": chosen,
                "reg_validation": {f"{w:g}": values[w] for w in sorted(values)}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint from before ``fitted_reg_weight`` was fitted with ``reg_weight``."""
        state = checkpoint.get("state_dict")
        if state is not None:
            state.setdefault("fitted_reg_weight",
                             torch.tensor(self.reg_weight, dtype=torch.float64))

    def score(self, batch: EvalBatch) -> torch.Tensor:
        # the weights in blocks of columns that fit a core's cache, made once per fit or load
        weights = self.derived("scoring_weights", (self.item_weights,),
                               lambda: column_blocks(self.item_weights))
        return batch.seen_sum(weights)  # (B, n_items)
