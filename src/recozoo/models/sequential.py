"""`SequentialRecommender`: the shared training and scoring of next-item models.

A sequential model encodes a left-padded item sequence into one state per position and scores
every item from a state. Training uses the ``sequences`` view: each window of a user's
chronological training items is one row, and *every* position predicts the item that follows it,
with softmax cross-entropy over the whole catalogue (``Recommender.cross_entropy_loss``). One
forward pass therefore trains on all prefixes of a window, as SASRec and whole-sequence GRU4Rec
do, and full cross-entropy is what makes SASRec strong (Petrov & Macdonald, "gSASRec", RecSys
2023; Klenitskiy & Vasilev, RecSys 2023). Scoring reads the state after the user's newest item.

The full softmax costs O(positions x n_items) per batch in time and memory; above
``SAMPLED_SOFTMAX_ABOVE`` items (or with ``sampled_softmax=true``) the loss is a sampled softmax
instead: ``n_sampled`` negatives drawn per batch from the items' training popularity (or
uniformly), shared by every position, with the log-Q correction
(``Recommender.sampled_cross_entropy_loss``). Evaluation always scores the whole catalogue.
"""

from __future__ import annotations

import torch

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.models.base import Recommender
from recozoo.models.components.sequence import (
    NegativeSampler,
    by_history_length,
    trim_leading_padding,
)

#: catalogue size above which the sequential models train with sampled softmax by default.
#: Measured (SASRec, 128 windows x 20 positions, d=64, one CPU thread, seconds per step, full
#: vs 1,000 sampled): 2k items 0.25 vs 0.21, 10k 0.87 vs 0.19, 30k 1.71 vs 0.19, 100k - vs
#: 0.24. Up to a few thousand items (ml-100k, ml-1m, Online Retail) the exact loss costs little;
#: from 10k on it is most of a step, and its (positions, n_items) logits most of the memory.
SAMPLED_SOFTMAX_ABOVE = 10_000


class SequentialRecommender(Recommender):
    """Base of Caser, GRU4Rec and SASRec.

    Subclasses implement ``encode(seq, user) -> (B, L, d)`` and ``output_layer(items) ->
    (weights (n, d), bias (n,) or None)``: the output item vectors that score states.

    Args:
        max_len: training window length, and the number of recent items read when scoring.
        batch_size: windows per training batch.
        sampled_softmax: train with sampled softmax (True) or the full softmax (False); None:
            sampled when the catalogue has more than ``SAMPLED_SOFTMAX_ABOVE`` items.
        n_sampled: negatives per batch for sampled softmax (shared by every position).
        negative_sampling: ``popularity`` or ``uniform`` (`NegativeSampler`).
    """

    def __init__(self, info: DatasetInfo, max_len: int = 50, batch_size: int = 256,
                 sampled_softmax: bool | None = None, n_sampled: int = 1000,
                 negative_sampling: str = "popularity", **kwargs):
        super().__init__(info, **kwargs)
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if n_sampled < 1:
            raise ValueError(f"model.n_sampled must be >= 1, got {n_sampled}")
        self.max_len, self.batch_size = int(max_len), int(batch_size)
        self.sampled_softmax = (info.n_items > SAMPLED_SOFTMAX_ABOVE if sampled_softmax is None
                                else bool(sampled_softmax))
        self.n_sampled = int(n_sampled)
        self.negative_sampler = NegativeSampler(info.item_popularity, negative_sampling)

    def train_view(self) -> TrainView:
        return TrainView("sequences", batch_size=self.batch_size, max_len=self.max_len)

    def encode(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """(B, L, d) one state per position of the left-padded ``seq`` (B, L)."""
        raise NotImplementedError

    def output_layer(self, items: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output vectors (n, d) and biases (n,) (None: no bias) of ``items`` (n,), or of
        the whole catalogue when ``items`` is None."""
        raise NotImplementedError

    def item_logits(self, states: torch.Tensor, items: torch.Tensor | None = None,
                    batch: EvalBatch | None = None) -> torch.Tensor:
        """(..., n) scores of ``items`` (n,), or (..., n_items) of every item, from (..., d)
        states; with an evaluation ``batch``, written into the memory it offers
        (`EvalBatch.dot_scores`). The bias is added in place (the product's gradient does not
        read its result)."""
        weights, bias = self.output_layer(items)
        logits = states @ weights.T if batch is None else batch.dot_scores(states, weights)
        return logits if bias is None else logits.add_(bias)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs, target = batch["input"], batch["target"]  # target -100 where nothing to predict
        if self.leading_padding_inert:  # the columns of padding in every row change no state
            inputs = trim_leading_padding(inputs, self.info.pad_item)
            target = target[:, -inputs.shape[1]:]
        states = self.encode(inputs, batch["user"])  # (B, L, d)
        keep = target != -100
        states, target = states[keep], target[keep]  # (N, d), (N,)
        if not self.sampled_softmax:
            return self.cross_entropy_loss(self.item_logits(states), target)  # (N, n_items)
        negatives = self.negative_sampler(self.n_sampled)  # (k,)
        weights, bias = self.output_layer(torch.cat([target, negatives]))  # (N + k, d)
        pos = (states * weights[:len(target)]).sum(-1)  # (N,)
        neg = states @ weights[len(target):].T  # (N, k)
        if bias is not None:
            pos, neg = pos + bias[:len(target)], neg + bias[len(target):]
        return self.sampled_cross_entropy_loss(pos, neg, target, negatives,
                                               self.negative_sampler.log_q)

    #: whether leading padding changes no state of this model's encoder (SASRec's attention
    #: blocks padded keys and counts positions from the newest item; Caser's windows read
    #: padding items however many there are): scoring then takes users in
    #: groups of similar history length, each group as wide as its longest history
    #: (`by_history_length`), and a training batch drops the columns that are padding in every
    #: row (Amazon Scientific's: ~21 columns of items of the 50, median). False where padded
    #: steps move a state (a GRU runs through them)
    leading_padding_inert: bool = False
    #: whether scoring reads a fixed number of the newest items (Caser's window), so that
    #: groups of similar history length would cost their sorting and nothing less
    scores_newest_window: bool = False

    def encode_last(self, seq: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """(B, d) the state after the newest item of ``seq``; encoders that can compute it
        more cheaply than every position override this."""
        return self.encode(seq, user)[:, -1]

    def score(self, batch: EvalBatch) -> torch.Tensor:
        history = batch.history[:, -self.max_len:]  # (B, L)
        if self.leading_padding_inert and not self.scores_newest_window:
            states = by_history_length(history, self.info.pad_item, lambda rows, h: self.encode_last(
                h, batch.user if rows is None else batch.user[rows]))
        else:
            states = self.encode_last(history, batch.user)  # (B, d)
        return self.item_logits(states, batch=batch)  # (B, n_items)
