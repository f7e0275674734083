"""BERT fine-tuned end to end to recommend items from their text (two towers).

The item tower is a pretrained transformer encoder over each item's text (title, category,
brand; ``DatasetInfo.item_text``) plus a residual linear adapter and, optionally, an ID
embedding behind a popularity gate, L2-normalised. The user vector is a recency-weighted sum of
the history's item vectors (learned weight per lag) plus the output of a causal Transformer over
the history (SASRec, Kang and McAuley, ICDM 2018), L2-normalised. The score is their dot
product over a temperature, for every item. The adapter and the Transformer's output start at
zero, so an untrained model already ranks items by text similarity to the recent history (the
pretrained sentence-embedding prior), and training learns corrections to it. Text-based sequential recommenders of this kind: Hou et al.,
"Towards Universal Sequence Representation Learning for Recommender Systems" (UniSRec, KDD 2022);
Li et al., "Text Is All You Need" (Recformer, KDD 2023). Because an item vector comes from text,
items never seen in training (cold start) are scored like any other.

CPU cost is the design constraint (a MiniLM forward pass is ~10 ms per title on one core):

* texts are tokenised once; the output of the frozen lower layers is cached (`TextTower`);
* a training step encodes only the batch's target items ("fresh" rows, at most
  ``max_fresh_items``) with gradient; every other item vector comes from a cache of the whole
  catalogue's text vectors, refreshed every ``refresh_every`` steps and before evaluation
  (a memory bank as in Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020);
* the encoder runs under bf16 autocast (``bf16``) on the model's device.

Negatives for the softmax cross-entropy (``negatives``): ``in_batch`` (the batch's targets),
``sampled`` (the batch's targets plus ``n_negatives`` uniformly drawn items) or ``catalogue``
(every item, fresh rows where encoded, cached rows elsewhere). Items with no training
interaction are never used as negatives: nothing in training says they are bad, and pushing
them down would defeat cold start.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.models.base import Recommender
from recozoo.models.components.text_tower import TextTower
from recozoo.models.components.user_tower import CausalUserTower

log = logging.getLogger(__name__)

NEGATIVES = ("in_batch", "sampled", "catalogue")


class PopularityGatedIDs(nn.Module):
    """ID embeddings added to the text vectors with a weight that grows with popularity:
    ``gate = sigmoid(a * log(1 + count) + b)``. The embeddings start at zero, so an item that
    never trains (a cold item) keeps exactly its text vector."""

    def __init__(self, n_items: int, dim: int, item_popularity: torch.Tensor):
        super().__init__()
        self.embedding = nn.Embedding(n_items, dim)
        nn.init.zeros_(self.embedding.weight)
        self.slope = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(-2.0))
        self.register_buffer("log_count", torch.log1p(item_popularity.float()), persistent=False)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.slope * self.log_count + self.bias)  # (n_items,)
        return text + gate[:, None] * self.embedding.weight


class BertFinetune(Recommender):
    """Two-tower recommender with a fine-tuned pretrained text encoder as the item tower.

    Args:
        pretrained: Hugging Face model name or local folder; None for all-MiniLM-L6-v2.
        max_length: tokens kept per item text.
        train_layers: top encoder layers that train (0 freezes it, -1 trains all).
        lora_rank: > 0 trains LoRA adapters of this rank in those layers instead of the weights.
        lora_alpha: LoRA scaling.
        pooling: ``mean`` or ``cls``.
        cache_frozen_layers: cache the frozen lower layers' output per item.
        bf16: encoder under bfloat16 autocast.
        encoder_lr: learning rate of the encoder (the optimizer's own lr trains the rest).
        temperature: softmax temperature of the cosine scores.
        user_dim: width of the user Transformer.
        id_embeddings: fuse popularity-gated ID embeddings with the text vectors.
        user_layers / user_heads / max_len / dropout: the user tower.
        negatives: ``in_batch``, ``sampled`` or ``catalogue``.
        n_negatives: uniformly drawn negatives per batch for ``sampled``.
        max_fresh_items: items encoded with gradient per step (the rest read the cache).
        refresh_every: steps between refreshes of the catalogue cache during training (0: only
            at epoch start and before evaluation, when stale).
        batch_size: training sequences per batch.
        encode_batch_size: texts per forward pass when encoding the catalogue.
    """

    #: scores come from the history's item texts only, never from a user id
    scores_new_users = True

    def __init__(self, info: DatasetInfo, pretrained: str | None = None, max_length: int = 32,
                 train_layers: int = 1, lora_rank: int = 0, lora_alpha: float = 16.0,
                 pooling: str = "mean", cache_frozen_layers: bool = True, bf16: bool = True,
                 encoder_lr: float = 5e-5, temperature: float = 0.05,
                 user_dim: int = 128, id_embeddings: bool = False,
                 user_layers: int = 2, user_heads: int = 2, max_len: int = 50,
                 dropout: float = 0.1, negatives: str = "catalogue", n_negatives: int = 256,
                 max_fresh_items: int = 128, refresh_every: int = 0, batch_size: int = 64,
                 encode_batch_size: int = 256, **kwargs: Any):
        super().__init__(info, **kwargs)
        if info.item_text is None:
            raise ValueError(f"model=bert_finetune needs item text, but dataset '{info.name}' has "
                             "none (DatasetInfo.item_text is None); use a dataset with item "
                             "titles or descriptions, e.g. atomic files with a .item file")
        if negatives not in NEGATIVES:
            raise ValueError(f"model.negatives must be one of {NEGATIVES}, got '{negatives}'")
        self.negatives, self.n_negatives = negatives, int(n_negatives)
        self.max_fresh_items, self.refresh_every = int(max_fresh_items), int(refresh_every)
        self.batch_size, self.max_len, self.encoder_lr = int(batch_size), int(max_len), encoder_lr
        self.text = TextTower(info.item_text, pretrained, max_length=max_length,
                              train_layers=train_layers, lora_rank=lora_rank,
                              lora_alpha=lora_alpha, pooling=pooling,
                              cache_frozen_layers=cache_frozen_layers, bf16=bf16,
                              encode_batch_size=encode_batch_size)
        dim = self.text.hidden_size
        self.temperature = float(temperature)
        self.adapter = nn.Linear(dim, dim)  # residual: starts as the identity map
        nn.init.zeros_(self.adapter.weight)
        nn.init.zeros_(self.adapter.bias)
        self.ids = (PopularityGatedIDs(info.n_items, dim, info.item_popularity)
                    if id_embeddings else None)
        # weight of the item `lag` steps before the newest one; starts at 0.5 ** lag
        self.lag_weight = nn.Parameter(0.5 ** torch.arange(float(max_len)))
        self.user_in = nn.Linear(dim, user_dim)
        self.user_tower = CausalUserTower(user_dim, max_len, user_layers, user_heads, dropout)
        self.user_out = nn.Linear(user_dim, dim)  # starts at zero: the recency sum alone
        nn.init.zeros_(self.user_out.weight)
        nn.init.zeros_(self.user_out.bias)
        # items with training interactions: the only ones used as negatives
        self.register_buffer("trained_items", info.item_popularity > 0, persistent=False)
        #: (n_items, H) text vectors of the catalogue; not saved (rebuilt from the weights)
        self._text_cache: torch.Tensor | None = None
        #: encoder updates since the cache was built (the cache is stale when > 0)
        self._steps_since_refresh = 0
        self._encoder_trains = any(p.requires_grad for p in self.text.parameters())

    # ------------------------------------------------------------------ item vectors
    def refresh_text_cache(self) -> None:
        """Re-encode every item's text with the current weights (no gradient, eval mode)."""
        self._text_cache = self.text.encode_all()
        self._steps_since_refresh = 0

    def _cached_text(self) -> torch.Tensor:
        """The catalogue's text vectors: evaluation always reads an up-to-date cache, training
        refreshes it every ``refresh_every`` steps (and at epoch start, see below)."""
        missing = self._text_cache is None or self._text_cache.device != self.device
        if self.training:
            stale = 0 < self.refresh_every <= self._steps_since_refresh
        else:
            stale = self._steps_since_refresh > 0
        if missing or stale:
            self.refresh_text_cache()
        return self._text_cache  # type: ignore[return-value]

    def item_table(self, fresh: torch.Tensor | None = None) -> torch.Tensor:
        """(n_items + 1, d) item vectors with a zero padding row; ``fresh`` items are encoded
        now with gradient, the others come from the cache."""
        text = self._cached_text()  # (n_items, H)
        if fresh is not None and len(fresh):
            text = text.index_copy(0, fresh, self.text(fresh))
        vectors = text + self.adapter(text)  # (n_items, d)
        if self.ids is not None:
            vectors = self.ids(vectors)
        vectors = nn.functional.normalize(vectors, dim=-1)
        return torch.cat([vectors, vectors.new_zeros(1, vectors.shape[1])])

    def item_embeddings(self) -> torch.Tensor:
        """(n_items, d) the item vectors users are scored against (for ``rerank=mmr``)."""
        return self.item_table()[:-1]

    def user_states(self, table: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """(B, max_len, d) user states over a left-padded item sequence (B, L)."""
        pad = sequence == self.info.pad_item
        items = table[sequence]  # (B, L, d), padding rows are zero
        items, pad = self.user_tower.fit_length(items, pad)
        length = items.shape[1]
        lag = torch.arange(length, device=items.device)
        lag = lag[:, None] - lag[None, :]  # (L, L): how far key j lies before query t
        weights = self.lag_weight[lag.clamp(min=0)] * (lag >= 0)  # (L, L), causal
        recent = torch.einsum("tj,bjd->btd", weights.to(items.dtype), items)  # (B, L, d)
        learned = self.user_out(self.user_tower(self.user_in(items), pad))  # (B, L, d)
        return nn.functional.normalize(recent + learned, dim=-1)

    # ------------------------------------------------------------------ training
    def train_view(self) -> TrainView:
        return TrainView("sequences", batch_size=self.batch_size, max_len=self.max_len)

    def _fresh_items(self, targets: torch.Tensor) -> torch.Tensor:
        """The distinct targets, at most ``max_fresh_items`` of them (a random subset)."""
        items = torch.unique(targets)
        if len(items) > self.max_fresh_items:
            items = items[torch.randperm(len(items), device=items.device)[:self.max_fresh_items]]
        return items

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        sequence, target = batch["input"], batch["target"]  # (B, L), (B, L) with -100 = none
        sequence, target = sequence[:, -self.max_len:], target[:, -self.max_len:]
        valid = target != -100
        targets = target[valid]  # (N,)
        table = self.item_table(self._fresh_items(targets))  # (n_items + 1, d)
        states = self.user_states(table, sequence)[:, -sequence.shape[1]:]  # (B, L, d)
        logits = states[valid] @ table[:-1].T / self.temperature  # (N, n_items)
        candidates = self.trained_items.clone()
        if self.negatives != "catalogue":
            candidates = torch.zeros_like(candidates)
            candidates[targets] = True
            if self.negatives == "sampled":
                pool = self.trained_items.nonzero().flatten()
                drawn = torch.randint(len(pool), (self.n_negatives,), device=pool.device)
                candidates[pool[drawn]] = True
        candidates[targets] = True
        logits = logits.masked_fill(~candidates, -math.inf)
        return self.cross_entropy_loss(logits, targets)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self._steps_since_refresh += int(self._encoder_trains)

    def on_train_epoch_start(self) -> None:
        if self._steps_since_refresh > 0:  # no evaluation refreshed it since the last epoch
            self.refresh_text_cache()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._text_cache = None  # new weights: re-encode on first use

    def configure_optimizers(self) -> torch.optim.Optimizer:
        encoder = [p for p in self.text.parameters() if p.requires_grad]
        encoder_ids = {id(p) for p in encoder}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in encoder_ids]
        groups = [{"params": rest}]
        if encoder:
            groups.append({"params": encoder, "lr": self.encoder_lr})
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        return factory(groups)

    # ------------------------------------------------------------------ scoring
    def score(self, batch: EvalBatch) -> torch.Tensor:
        table = self.item_table()  # (n_items + 1, d)
        user = self.user_states(table, batch.history)[:, -1]  # (B, d)
        return user @ table[:-1].T / self.temperature  # (B, n_items)
