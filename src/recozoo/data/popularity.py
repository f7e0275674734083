"""Item popularity and the head/tail partition, from training interactions only."""

from __future__ import annotations

import numpy as np


def item_popularity(items: np.ndarray, n_items: int) -> np.ndarray:
    """Training interaction count per item, shape (n_items,)."""
    return np.bincount(items, minlength=n_items).astype(np.float64)


def tail_mask(popularity: np.ndarray, head_share: float = 0.2) -> np.ndarray:
    """True for tail items: everything outside the top ``head_share`` of items by count.

    Ties at the boundary are broken by item index so the head has exactly
    ``round(head_share * n_items)`` items.
    """
    if not 0.0 <= head_share <= 1.0:
        raise ValueError(f"head_share must be within [0, 1], got {head_share}")
    n_head = int(round(head_share * len(popularity)))
    order = np.lexsort((np.arange(len(popularity)), -popularity))
    mask = np.ones(len(popularity), dtype=bool)
    mask[order[:n_head]] = False
    return mask


def popularity_buckets(popularity: np.ndarray, head_share: float = 0.2,
                       tail_share: float = 0.5) -> np.ndarray:
    """0 = head (top ``head_share`` of items), 2 = tail (bottom ``tail_share``), 1 = mid."""
    order = np.lexsort((np.arange(len(popularity)), -popularity))
    n_head = int(round(head_share * len(popularity)))
    n_tail = int(round(tail_share * len(popularity)))
    buckets = np.ones(len(popularity), dtype=np.int64)
    buckets[order[:n_head]] = 0
    buckets[order[len(order) - n_tail:]] = 2
    return buckets
