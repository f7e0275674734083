"""Item popularity and the head/tail partition, from training interactions only."""

from __future__ import annotations

import numpy as np

#: the share of items (by training count) that forms the head, unless ``eval.head_share`` says
#: otherwise; every default in the code refers to this one
DEFAULT_HEAD_SHARE = 0.2


def item_popularity(items: np.ndarray, n_items: int) -> np.ndarray:
    """Training interaction count per item, shape (n_items,)."""
    return np.bincount(items, minlength=n_items).astype(np.float64)


def tail_mask(popularity: np.ndarray, head_share: float = DEFAULT_HEAD_SHARE) -> np.ndarray:
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


#: names of the popularity buckets, in the order of ``popularity_buckets``' indices. The bottom
#: bucket is "distant" (the distant tail), not "tail": the tail is every item outside the head
#: (`tail_mask`), i.e. mid and distant together.
BUCKETS: tuple[str, ...] = ("head", "mid", "distant")


def popularity_buckets(popularity: np.ndarray, head_share: float = DEFAULT_HEAD_SHARE,
                       tail_share: float = 0.5) -> np.ndarray:
    """Popularity bucket per item: 0 = head, 1 = mid, 2 = distant (names in ``BUCKETS``).

    The head is exactly the head of `tail_mask` (the top ``head_share`` of items by training
    count, ties broken by item index), so ``buckets > 0`` equals ``tail_mask``: the tail is mid
    and distant together. The tail is split by the same order: the bottom ``tail_share`` of all
    items form the distant bucket (the "distant tail" of Abdollahpouri et al., FLAIRS 2019), the
    items in between the mid. With the defaults: 20% head, 30% mid, 50% distant. So
    ``tail_recall`` counts mid and distant targets, ``recall@k/distant`` the distant ones only.
    """
    if not 0.0 <= tail_share <= 1.0:
        raise ValueError(f"tail_share must be within [0, 1], got {tail_share}")
    head = ~tail_mask(popularity, head_share)
    order = np.lexsort((np.arange(len(popularity)), -popularity))
    n_tail = min(int(round(tail_share * len(popularity))), int((~head).sum()))
    buckets = np.where(head, 0, 1).astype(np.int64)
    if n_tail:
        buckets[order[len(order) - n_tail:]] = 2
    return buckets
