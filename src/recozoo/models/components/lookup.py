"""`rows`: ``table[index]`` for tables that train, with a backward that does not depend on the
CPU threads."""

from __future__ import annotations

import torch


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]``: the rows of a 2-D ``table`` at ``index`` (any shape), shape
    ``(*index.shape, table.shape[1])``.

    The backward of advanced indexing sums the gradients of repeated rows with an accumulating
    ``index_put_`` whose order varies with the CPU threads, so two runs of one seed differed
    at 1e-6 (bert_finetune, lightgcn, svdpp with 2 threads). This is ``embedding``'s lookup,
    whose backward (``index_add_``) sums them in a fixed order, without PyTorch's deterministic
    mode (which would slow every ``nn.Embedding`` backward down).
    """
    return torch.nn.functional.embedding(index, table)


def entries(vector: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``vector[index]`` for a 1-D ``vector`` that trains (a bias per item), shape
    ``index.shape``, with `rows`'s fixed-order backward."""
    return rows(vector[:, None], index)[..., 0]
