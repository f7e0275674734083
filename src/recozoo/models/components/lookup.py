"""`rows`: ``table[index]`` for tables that train, with a backward that does not depend on the
CPU threads; `embedding_rows`: the same for an ``nn.Embedding``, sparse gradients kept;
`loop_table`, `check_rows` and `loop_triples`: what bpr's compiled loops read and write, checked
first."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]``: the rows of a 2-D ``table`` at ``index`` (any shape), shape
    ``(*index.shape, table.shape[1])``.

    The backward of advanced indexing sums the gradients of repeated rows with an accumulating
    ``index_put_`` whose order varies with the CPU threads, so two runs of one seed differed
    at 1e-6 (bert_finetune, lightgcn, svdpp with 2 threads). This lookup is ``index_select``,
    whose backward (``index_add_``) sums them in a fixed order, without PyTorch's deterministic
    mode (which would slow every ``nn.Embedding`` backward down). ``embedding``'s backward sums
    the same way (the gradients are equal to the bit) but is slower on the CPU: bpr's ml-100k
    step (a 1,682 x 64 table at 2,048 x 2 rows, 943 x 64 at 2,048), one thread, 0.9-1.4 ms
    against 1.3-2.1.
    """
    flat = torch.index_select(table, 0, index.reshape(-1))
    return flat.view(*index.shape, table.shape[1])


def embedding_rows(embedding: nn.Embedding, index: torch.Tensor) -> torch.Tensor:
    """``embedding(index)``: through `rows` for a dense table; a table with sparse gradients
    (``sparse=True``, for a sparse optimizer) keeps its own lookup, which makes them."""
    if embedding.sparse:
        return embedding(index)
    return rows(embedding.weight, index)


def entries(vector: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``vector[index]`` for a 1-D ``vector`` that trains (a bias per item), shape
    ``index.shape``, with `rows`'s fixed-order backward."""
    return rows(vector[:, None], index)[..., 0]


def loop_table(table: torch.Tensor) -> bool:
    """Whether bpr's compiled loops can change ``table`` in place through a NumPy view of its
    memory: a contiguous float32 matrix on the CPU."""
    return (table.device.type == "cpu" and table.dtype == torch.float32 and table.dim() == 2
            and table.is_contiguous())


def check_rows(index: torch.Tensor, n_rows: int, what: str) -> None:
    """Raise IndexError unless every entry of ``index`` is a row of a table of ``n_rows`` rows.

    For the compiled loops (`recozoo.models.components.bpr_loops`), which read and write the
    tables without bounds checks: an index out of range would touch memory outside the table
    instead of failing as ``index_select`` does."""
    if index.numel():
        low, high = torch.aminmax(index)
        if low < 0 or high >= n_rows:
            bad = int(low) if low < 0 else int(high)
            raise IndexError(f"{what}: index {bad} is out of range for a table of {n_rows} rows")


def loop_triples(user_table: torch.Tensor, item_table: torch.Tensor, users: torch.Tensor,
                 positives: torch.Tensor, negatives: torch.Tensor,
                 positive_weight: torch.Tensor | None, caller: str,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BPR's (user, positive, negatives) triples and the positives' weights as the NumPy arrays
    bpr's compiled loops read: int64 indices, each checked against its table (`check_rows`),
    and float32 weights, one per item ((0,) for none). ``users`` and ``positives`` must be
    (B,), ``negatives`` (B, n). ``caller`` names the errors."""
    if negatives.dim() != 2 or len(negatives) != len(users) or len(positives) != len(users):
        raise ValueError(f"{caller}: users {tuple(users.shape)}, positives "
                         f"{tuple(positives.shape)} and negatives {tuple(negatives.shape)} must "
                         "be (B,), (B,) and (B, n)")
    check_rows(users, len(user_table), f"{caller}: users")
    check_rows(positives, len(item_table), f"{caller}: positives")
    check_rows(negatives, len(item_table), f"{caller}: negatives")
    if positive_weight is not None and len(positive_weight) != len(item_table):
        raise ValueError(f"{caller}: {len(positive_weight)} positive weights for "
                         f"{len(item_table)} items")
    weights = (np.zeros(0, np.float32) if positive_weight is None
               else positive_weight.detach().to(torch.float32).contiguous().numpy())
    return (*(index.to(torch.int64).contiguous().numpy()
              for index in (users, positives, negatives)), weights)
