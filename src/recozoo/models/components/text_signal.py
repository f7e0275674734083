"""How much a catalogue's item text says about what users interact with.

A text-based recommender should lean on item text only where that text carries signal about the
interactions. `user_text_auc` measures it from the training data alone, before any training:
the probability that two items of one user have more similar text vectors than two items drawn
at random from the training interactions (a Mann-Whitney AUC; ties count one half). 0.5 means
the text tells a user's items apart from random ones no better than a coin: constant text, bare
ids, names that carry no meaning. Real product titles score above it (seed 1, leave-one-out
training parts, all-MiniLM-L6-v2 mean-pooled): Amazon Scientific 0.634, the synthetic shop
0.557, Online Retail II 2009-10 0.534, constant text 0.500.
"""

from __future__ import annotations

import torch
from scipy.stats import mannwhitneyu


def _mann_whitney_auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(a positive value > a negative value) + 0.5 P(equal): SciPy's Mann-Whitney U of the
    positives, divided by the number of (positive, negative) pairs."""
    u = mannwhitneyu(positive.double().numpy(), negative.double().numpy(),
                     method="asymptotic").statistic
    return float(u / (len(positive) * len(negative)))


def user_text_auc(text: torch.Tensor, train_pairs: torch.Tensor, n_pairs: int = 50_000,
                  seed: int = 0, decimals: int = 4, min_users: int = 10) -> float | None:
    """AUC of "two items of the same user" against "two random training items" by text cosine.

    Args:
        text: (n_items, d) item text vectors (normalised here).
        train_pairs: (2, n) the (user, item) training interactions (``DatasetInfo.train_pairs``).
        n_pairs: pairs drawn of each kind (a user's pairs are drawn in proportion to the
            user's interactions, random pairs in proportion to item popularity, so both sides
            see the same items as often and popularity alone does not move the AUC).
        seed: seed of the draws (the result is a fact of the data, not of the run's seed).
        decimals: cosines are rounded to this many decimals, so that identical texts tie
            exactly whatever the float noise of their encoding.
        min_users: fewer users with two distinct items than this: too few to judge.

    Returns:
        The AUC in [0, 1], or None when fewer than ``min_users`` users have two distinct
        training items (too few to judge).

    Example:
        >>> text = torch.ones(4, 3)  # every item has the same text
        >>> pairs = torch.tensor([[row // 2 for row in range(40)], [row % 4 for row in range(40)]])
        >>> user_text_auc(text, pairs)  # 20 users with two items each
        0.5
    """
    if train_pairs.ndim != 2 or train_pairs.shape[0] != 2:
        raise ValueError(f"train_pairs must have shape (2, n), got {tuple(train_pairs.shape)}")
    vectors = torch.nn.functional.normalize(text.float(), dim=-1)
    users, items = train_pairs[0].long().cpu(), train_pairs[1].long().cpu()
    order = torch.argsort(users, stable=True)
    users, items = users[order], items[order]
    generator = torch.Generator().manual_seed(seed)
    # one interaction, then another of the same user
    first = torch.randint(len(users), (n_pairs,), generator=generator)
    start = torch.searchsorted(users, users[first])
    end = torch.searchsorted(users, users[first], right=True)
    second = start + (torch.rand(n_pairs, generator=generator) * (end - start)).long()
    second = second.clamp(max=len(users) - 1)
    distinct = items[first] != items[second]
    unique_pairs = torch.unique(torch.stack([users, items]), dim=1)
    if int((torch.bincount(unique_pairs[0]) >= 2).sum()) < min_users or not distinct.any():
        return None
    a, b = items[first][distinct], items[second][distinct]
    # as many random pairs of training interactions (of distinct items)
    c = items[torch.randint(len(items), (len(a),), generator=generator)]
    d = items[torch.randint(len(items), (len(a),), generator=generator)]
    c, d = c[c != d], d[c != d]
    vectors = vectors.cpu()
    same = ((vectors[a] * vectors[b]).sum(1) * 10 ** decimals).round()
    random = ((vectors[c] * vectors[d]).sum(1) * 10 ** decimals).round()
    return _mann_whitney_auc(same, random)
