"""BERT fine-tuned end to end to recommend items from their text (two towers).

The item tower is a pretrained transformer encoder over each item's text (title, category,
brand; ``DatasetInfo.item_text``) plus a residual linear adapter, L2-normalised, and optionally
mixed with an ID embedding by a popularity gate (`PopularityGatedIDs`: warm items may leave their
text vector, which they must where text says nothing; cold items have no ID embedding of their
own, see below). The user vector is a recency-weighted sum of the history's item vectors
(learned weight per lag) plus the output of a causal Transformer over the history (SASRec, Kang
and McAuley, ICDM 2018), L2-normalised. The score is their dot product over a temperature,
for every item. The adapter and the Transformer's output start at zero and the ID embeddings
at the text vectors, so an untrained model already ranks items by text similarity to the recent
history (the pretrained sentence-embedding prior), and training learns corrections to it. Text-based sequential
recommenders of this kind: Hou et al., "Towards Universal Sequence Representation Learning for
Recommender Systems" (UniSRec, KDD 2022); Li et al., "Text Is All You Need" (Recformer, KDD
2023). Because an item vector comes from text, items never seen in training (cold start) are
scored like any other.

Cold items. Training moves warm items' vectors (and so the users') away from raw text, towards
their ID embeddings; a cold item's bare text vector then no longer lives where users look (on
Amazon Scientific with 5% of items held out cold, seed 1: cold targets ranked 1,870th of 4,385
by median, test_cold/recall@10 0). So at scoring time a cold item takes its text vector plus
the offset by which its ``cold_neighbours`` most text-similar trained items left theirs
(softmax-weighted by text similarity over the temperature): the ID space's correction,
extended by text, as a k-nearest-neighbour estimate of the ID embedding it would have learned.

Scores for the tail. The softmax learns each item's training frequency into its score, so
popular items win close calls. Scoring subtracts ``posthoc_adjustment`` (τ) times the log of an
item's training share: the post-hoc logit adjustment of Menon et al., "Long-tail Learning via
Logit Adjustment" (ICLR 2021), the scoring-time counterpart of ``debias=pop_neg``. By default
(``auto``) the model trains and early-stops on the plain scores, then raises τ through
``posthoc_grid`` while its validation NDCG@10 stays within ``posthoc_tolerance`` (1%) of τ = 0's
and keeps the last such τ (`choose_on_validation`): the rule by which a fixed τ = 0.2 had been chosen across four
datasets, applied to each run's own data, since a random split of ratings, whose held-out items
follow popularity, pays for any τ (figures in ``conf/model/bert_finetune.yaml``).
Cold items take the trained items' mean offset (`posthoc_offsets`).

CPU cost is the design constraint (a MiniLM layer costs ~1 ms per title on one core):

* texts are tokenised once; the output of the frozen lower layers is cached in memory and on
  disk (`TextTower`); with ``train_layers=0`` nothing is ever re-encoded;
* every item vector of the full softmax comes from a cache of the catalogue's text vectors
  (refreshed at epoch start, every ``refresh_every`` steps and before evaluation);
* while the encoder trains, at most ``max_fresh_items`` targets plus ``n_negatives`` drawn items
  are encoded per step with gradient.

Consistent negatives. A softmax must contrast vectors made by one set of weights: mixing rows
encoded now with gradient (the targets) into a catalogue cached at epoch start lets the encoder
lower the loss by moving fresh vectors away from stale ones, without learning anything about
items (the failure of a memory bank without a momentum encoder; He et al., MoCo, CVPR 2020).
Here every softmax is consistent: ``catalogue`` is the full softmax over the cached catalogue
(which trains the adapter, the ID embeddings and the user tower), plus, while the encoder
trains, a "fresh" softmax over the targets and ``n_negatives`` uniform draws all encoded by the
current weights, corrected by log-Q for how often each was drawn (mixed negative sampling, Yang
et al., WWW 2020; Yi et al., RecSys 2019). ``sampled`` is the fresh softmax alone,
``in_batch`` the same without the uniform draws. Items with no training interaction are never
negatives: nothing in training says they are bad, and pushing them down would defeat cold
start.

Fine-tuning in two phases. Trained with everything else from the first step, or restarted from
a converged frozen model with everything else training on, the top layer lost to the frozen
encoder (Amazon Scientific, seed 1: best validation NDCG@10 .0939 and .0978 against the frozen
run's .0998; the figures in docs/bert_finetune.md): the rest of the model re-fits past its optimum while the
encoder moves. So with ``train_layers`` > 0 (the configured default: 1) one fit runs two phases
(`recozoo.training_callbacks.FinetuneOnPlateau`, ``finetune_start: plateau``): the encoder frozen
until early stopping would end the run, then the weights that validated best restored and the
top layer trained alone, everything else fixed, kept where it validates better. Its fresh
softmax weighs each target by its vector's text share (``fresh_weighting``), so the encoder
learns from items that lean on text rather than from popular ones that lean on their IDs.
Scientific, seed 1: validation .1038 against the frozen phase's .1032, test .0977 / TailRecall@10
.0762 against .0957 / .0682 with ``train_layers=0``.

Weak text. Where item text says nothing about the interactions (bare names, ids, one text for
all), the ID embeddings must carry the model, and they only do if they learn fast enough; where
text is informative, fast IDs overfit the warm items and cost accuracy. Before training the model
measures its catalogue (`recozoo.models.components.text_signal.user_text_auc`: how often two
items of one user are closer in text than two random items) and, below ``weak_text_auc``, trains
the ID embeddings at ``weak_text_id_lr`` (``weak_text`` forces the choice either way; an explicit
``id_lr`` overrides both). The log says what it chose and why.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.debias import PopularityNegatives
from recozoo.models.base import Recommender
from recozoo.models.components.lookup import rows
from recozoo.models.components.sequence import by_history_length
from recozoo.models.components.text_signal import user_text_auc
from recozoo.models.components.text_tower import TextTower
from recozoo.models.components.user_tower import CausalUserTower
from recozoo.models.optimizers import grouped_optimizer
from recozoo.training_callbacks import FINETUNE_STARTS, FinetuneOnPlateau

log = logging.getLogger(__name__)

NEGATIVES = ("catalogue", "sampled", "in_batch")
WEAK_TEXT = ("auto", True, False)


class PopularityGatedIDs(nn.Module):
    """Item vectors that mix text and ID by popularity: ``v_i = (1 - g_i) t_i + g_i e_i``.

    ``t_i`` is the item's unit text vector, ``e_i`` its ID embedding and
    ``g_i = sigmoid(slope * log(1 + n_i) + bias)`` for an item with ``n_i > 0`` training
    interactions, 0 for an item with none (a cold item has no ID embedding of its own). The
    embeddings start as the text vectors (`initialise`), so the untrained model is the text
    prior; then a warm item's vector is free to leave its text, which it must where the text
    says nothing about the item (a name, an id). With the default ``bias`` of -1 the gate starts
    at 0.42 for one interaction and 0.88 for twenty; it is learned.
    """

    def __init__(self, n_items: int, dim: int, item_popularity: torch.Tensor,
                 bias: float = -1.0):
        super().__init__()
        self.embedding = nn.Embedding(n_items, dim)
        nn.init.zeros_(self.embedding.weight)
        self.slope = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(float(bias)))
        self.register_buffer("log_count", torch.log1p(item_popularity.float()), persistent=False)
        #: whether the embeddings hold their start (saved, so a checkpoint is not re-initialised)
        self.register_buffer("initialised", torch.tensor(False))

    def gate(self) -> torch.Tensor:
        """(n_items,) the weight of each item's ID embedding; 0 for items never trained."""
        return torch.sigmoid(self.slope * self.log_count + self.bias) * (self.log_count > 0)

    @torch.no_grad()
    def initialise(self, text: torch.Tensor) -> None:
        """Start every embedding at its item's unit text vector ``text`` (n_items, d)."""
        self.embedding.weight.copy_(text)
        self.initialised.fill_(True)

    def forward(self, text: torch.Tensor, items: torch.Tensor | None = None,
                text_only: torch.Tensor | None = None) -> torch.Tensor:
        """(n, d) mixed vectors of ``items`` (all items when None) from their unit ``text``;
        rows where the (n,) mask ``text_only`` is True keep their text vector, as a cold item."""
        gate = self.gate() if items is None else self.gate()[items]  # (n,)
        if text_only is not None:
            gate = gate * ~text_only
        ids = self.embedding.weight if items is None else self.embedding(items)  # (n, d)
        return (1 - gate[:, None]) * text + gate[:, None] * ids


def posthoc_offsets(item_popularity: torch.Tensor, tau: float) -> torch.Tensor | None:
    """(n_items,) offsets added to the scores: ``-τ log prior_i`` (the logit adjustment of
    `PopularityNegatives`, applied after training), None at τ = 0. An item without training
    interactions takes the mean offset of the trained ones: its score holds no learned frequency
    to correct, and the largest offset would put every cold item above warm ones of equal score
    (Scientific with 5% of items cold, seed 1: validation NDCG@10 .0919 -> .0835)."""
    adjustment = PopularityNegatives(tau=tau).logit_adjustment(item_popularity)
    if adjustment is None:
        return None
    offsets, trained = -adjustment, item_popularity > 0
    if trained.any():
        offsets[~trained] = offsets[trained].mean()
    return offsets


class BertFinetune(Recommender):
    """Two-tower recommender with a fine-tuned pretrained text encoder as the item tower.

    Args:
        pretrained: Hugging Face model name or local folder; None for all-MiniLM-L6-v2.
        max_length: tokens kept per item text.
        train_layers: top encoder layers that train (0 freezes it, -1 trains all).
        finetune_start: when they start to train: ``plateau``, once validation stops
            improving with them frozen, from the best weights so far (`FinetuneOnPlateau`;
            the run keeps the better phase), or ``start``, from the first step.
        lora_rank: > 0 trains LoRA adapters of this rank in those layers instead of the weights.
        lora_alpha: LoRA scaling.
        pooling: ``mean`` or ``cls``.
        cache_frozen_layers: cache the frozen lower layers' output per item.
        cache_dir: folder where that output is also kept on disk for later runs (None: memory).
        bf16: encoder under bf16 autocast (faster, not bit-deterministic on CPU).
        encoder_lr: learning rate of the encoder (the optimizer's own lr trains the rest).
        encoder_warmup: optimizer steps over which the encoder's learning rate rises linearly
            from 0 to ``encoder_lr`` once it starts to train (0: none).
        temperature: softmax temperature of the cosine scores.
        user_dim: width of the user Transformer.
        id_embeddings: mix popularity-gated ID embeddings into the item vectors.
        id_lr: learning rate of the ID embeddings; None: ``weak_text_id_lr`` where the text is
            weak (see ``weak_text``), else the optimizer's own lr.
        weak_text: ``"auto"`` measures whether the item text is weak before training
            (`user_text_auc` below ``weak_text_auc``); True / False force the answer.
        weak_text_auc: the same-user text AUC below which ``"auto"`` calls the text weak.
        weak_text_id_lr: learning rate of the ID embeddings where the text is weak.
        id_dropout: share of the items whose ID embedding is left out of each training step
            (their text vector alone, as a cold item's), so that the user tower also ranks
            text-only vectors among ID-mixed ones (the cold-start condition; DropoutNet,
            Volkovs et al., NeurIPS 2017); 0: never.
        cold_neighbours: trained items whose ID offsets place an untrained item at scoring
            time (see the module docstring); 0: an untrained item keeps its text vector.
        posthoc_adjustment: τ of the post-hoc logit adjustment of the scores (see the module
            docstring): an item's score is lowered by ``τ log prior_i``, prior = its share of
            the training interactions (+1 smoothed); 0: the plain scores; ``"auto"``: trained
            and early-stopped on the plain scores, then τ is chosen on validation with the
            best weights (`choose_on_validation`).
        posthoc_grid: the τ that ``"auto"`` tries, rising, until one falls outside the
            tolerance (0 among them: the reference).
        posthoc_tolerance: the share of τ = 0's validation value that ``"auto"`` gives up at
            most for a larger τ.
        gate_bias: start of the popularity gate's bias (`PopularityGatedIDs`; higher trusts
            the ID embeddings of warm items more from the start).
        fresh_user_grad: whether the fresh softmax (encoder training) also trains the user
            tower; False stops its gradient there, so the user tower learns from the full
            softmax over the catalogue alone.
        fresh_weighting: ``text_share``: each target of the fresh softmax weighs its vector's
            text share (1 - its ID gate), so the encoder learns from the items whose vectors
            are mostly text rather than from the popular ones that lean on their IDs;
            ``none``: every target alike.
        user_layers / user_heads / max_len / dropout: the user tower.
        negatives: ``catalogue``, ``sampled`` or ``in_batch`` (see the module docstring).
        n_negatives: items drawn uniformly per step for the fresh softmax (``sampled``, and
            ``catalogue`` while the encoder trains).
        max_fresh_items: distinct targets encoded with gradient per step while the encoder
            trains (positions whose target is not among them skip the fresh softmax).
        refresh_every: steps between refreshes of the catalogue cache during training (0: only
            at epoch start and before evaluation, when stale).
        max_epochs: at most this many epochs, whatever ``trainer.max_epochs`` says (the
            trainer's default suits models whose epoch takes seconds); None: the trainer's.
        patience: epochs without a better validation score before training stops (sets the
            early-stopping callback's patience; None: the callback's own).
        batch_size: training sequences per batch.
        encode_batch_size: texts per forward pass when encoding the catalogue.
        init_from: a bert_finetune checkpoint (``checkpoints/best.ckpt`` of an earlier run on
            the same data) whose weights start this model: with ``train_layers`` > 0, the
            second phase of fine-tuning that starts from the converged frozen model. Every
            weight of that checkpoint with the same name and shape is loaded (the optimizer's
            state is not: a new phase trains other weights); None: start from scratch.
    """

    #: scores come from the history's item texts only, never from a user id
    scores_new_users = True

    def __init__(self, info: DatasetInfo, pretrained: str | None = None, max_length: int = 32,
                 train_layers: int = 0, finetune_start: str = "plateau", lora_rank: int = 0,
                 lora_alpha: float = 16.0, pooling: str = "mean", cache_frozen_layers: bool = True,
                 cache_dir: str | None = None, bf16: bool = False, encoder_lr: float = 5e-5,
                 encoder_warmup: int = 0, temperature: float = 0.1, user_dim: int = 128,
                 id_embeddings: bool = True, id_lr: float | None = None,
                 weak_text: str | bool = "auto", weak_text_auc: float = 0.6,
                 weak_text_id_lr: float = 0.01, id_dropout: float = 0.0,
                 cold_neighbours: int = 3, posthoc_adjustment: float | str = "auto",
                 posthoc_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
                 posthoc_tolerance: float = 0.01,
                 gate_bias: float = -1.0, fresh_user_grad: bool = True,
                 fresh_weighting: str = "text_share",
                 user_layers: int = 2, user_heads: int = 2, max_len: int = 50,
                 dropout: float = 0.1, negatives: str = "catalogue", n_negatives: int = 128,
                 max_fresh_items: int = 128, refresh_every: int = 0,
                 max_epochs: int | None = None, patience: int | None = None,
                 batch_size: int = 64, init_from: str | None = None,
                 encode_batch_size: int = 256, **kwargs: Any):
        super().__init__(info, **kwargs)
        if info.item_text is None:
            raise ValueError(f"model=bert_finetune needs item text, but dataset '{info.name}' has "
                             "none (DatasetInfo.item_text is None); give it item titles or "
                             "descriptions: data=table takes an items table (data.items_path="
                             "<file> data.item_key=<its id column> +data.item_fields.title="
                             "<its title column>), atomic files a .item file beside the .inter")
        if finetune_start not in FINETUNE_STARTS:
            raise ValueError("model.finetune_start must be 'plateau' or 'start', got "
                             f"{finetune_start!r}")
        self.finetune_start = finetune_start
        if negatives not in NEGATIVES:
            raise ValueError(f"model.negatives must be one of {NEGATIVES}, got '{negatives}'")
        if weak_text not in WEAK_TEXT or not isinstance(weak_text, (str, bool)):
            raise ValueError(f"model.weak_text must be auto, true or false, got '{weak_text}'")
        if int(cold_neighbours) < 0:
            raise ValueError(f"model.cold_neighbours must be >= 0, got {cold_neighbours}")
        self.posthoc_auto = posthoc_adjustment == "auto"
        if not self.posthoc_auto and (isinstance(posthoc_adjustment, str)
                                      or float(posthoc_adjustment) < 0):
            raise ValueError("model.posthoc_adjustment must be a number >= 0 or auto, got "
                             f"{posthoc_adjustment!r}")
        self.posthoc_grid = tuple(float(t) for t in posthoc_grid)
        if self.posthoc_auto and (0.0 not in self.posthoc_grid or min(self.posthoc_grid) < 0):
            raise ValueError("model.posthoc_grid must hold 0 (the plain scores, the reference) "
                             f"and no negative τ, got {list(posthoc_grid)}")
        if not 0.0 <= float(posthoc_tolerance) < 1.0:
            raise ValueError("model.posthoc_tolerance must be a share in [0, 1), got "
                             f"{posthoc_tolerance}")
        self.posthoc_tolerance = float(posthoc_tolerance)
        if not 0.0 <= float(id_dropout) < 1.0:
            raise ValueError(f"model.id_dropout must be a share in [0, 1), got {id_dropout}")
        if max_epochs is not None and int(max_epochs) < 1:
            raise ValueError(f"model.max_epochs must be >= 1 or null, got {max_epochs}")
        if patience is not None and int(patience) < 1:
            raise ValueError(f"model.patience must be >= 1 or null, got {patience}")
        self.patience = None if patience is None else int(patience)
        self.negatives, self.n_negatives = negatives, int(n_negatives)
        self.max_fresh_items, self.refresh_every = int(max_fresh_items), int(refresh_every)
        self.batch_size, self.max_len, self.encoder_lr = int(batch_size), int(max_len), encoder_lr
        self.max_epochs = None if max_epochs is None else int(max_epochs)
        self.id_lr = None if id_lr is None else float(id_lr)
        self.weak_text, self.weak_text_auc = weak_text, float(weak_text_auc)
        self.weak_text_id_lr, self.id_dropout = float(weak_text_id_lr), float(id_dropout)
        self.cold_neighbours = int(cold_neighbours)
        #: the same-user text AUC measured by `text_is_weak` (None until measured or unknown)
        self.text_auc: float | None = None
        self._text_is_weak: bool | None = None
        self.encoder_warmup, self.fresh_user_grad = int(encoder_warmup), bool(fresh_user_grad)
        if fresh_weighting not in ("text_share", "none"):
            raise ValueError(f"fresh_weighting must be 'text_share' or 'none', got "
                             f"{fresh_weighting!r}")
        self.fresh_weighting = fresh_weighting
        self.text = TextTower(info.item_text, pretrained, max_length=max_length,
                              train_layers=train_layers, lora_rank=lora_rank,
                              lora_alpha=lora_alpha, pooling=pooling,
                              cache_frozen_layers=cache_frozen_layers, bf16=bf16,
                              encode_batch_size=encode_batch_size, cache_dir=cache_dir)
        dim = self.text.hidden_size
        self.temperature = float(temperature)
        self.adapter = nn.Linear(dim, dim)  # residual: starts as the identity map
        nn.init.zeros_(self.adapter.weight)
        nn.init.zeros_(self.adapter.bias)
        self.ids = (PopularityGatedIDs(info.n_items, dim, info.item_popularity, gate_bias)
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
        # each trained item's share of the training targets (the in-batch sampling rate)
        share = info.item_popularity.float() / info.item_popularity.float().sum().clamp(min=1)
        self.register_buffer("target_share", share, persistent=False)
        if self.posthoc_auto:  # the τ chosen on validation; in checkpoints (0 while training)
            self.register_buffer("posthoc_tau", torch.tensor(0.0, dtype=torch.float64))
        else:
            self.posthoc_tau = float(posthoc_adjustment)
        #: (n_items, H) text vectors of the catalogue; not saved (rebuilt from the weights)
        self._text_cache: torch.Tensor | None = None
        #: encoder updates since the cache was built (the cache is stale when > 0)
        self._steps_since_refresh = 0
        #: the encoder weights that train (`FinetuneOnPlateau` freezes them until validation
        #: plateaus with ``finetune_start: plateau``); a plain list, not registered twice
        self._encoder_params = [p for p in self.text.parameters() if p.requires_grad]
        trains = {id(p) for p in self._encoder_params}
        self._encoder_names = [name for name, p in self.named_parameters() if id(p) in trains]
        #: the values of those weights the catalogue cache was encoded with (`refresh_text_cache`)
        self._cache_weights: list[torch.Tensor] | None = None
        self._epoch_started: float | None = None
        self._eta_logged = False
        #: whether the weights hold (`hold_weights`: an evaluation stage, a served run), and the
        #: item table built while they do
        self._weights_held = False
        self._held_table: torch.Tensor | None = None
        if init_from is not None:
            self.load_weights(init_from)

    @property
    def _encoder_trains(self) -> bool:
        """Whether the encoder trains now (in the second phase, or from the start)."""
        return any(p.requires_grad for p in self._encoder_params)

    def configure_callbacks(self) -> list[L.Callback]:
        """The base callbacks, plus `FinetuneOnPlateau` where encoder weights train: frozen
        until validation plateaus (``finetune_start: plateau``) or from the first step."""
        callbacks = super().configure_callbacks()
        if self._encoder_params:
            callbacks.append(FinetuneOnPlateau(self._encoder_params, lr=self.encoder_lr,
                                               group_name="encoder", warmup=self.encoder_warmup,
                                               start=self.finetune_start))
        return callbacks

    def constant_tensors(self) -> list[torch.Tensor]:
        """The text encoder's frozen weights (all of them at ``train_layers: 0``): the weight
        average skips them."""
        return [p for p in self.text.parameters() if not p.requires_grad]

    # ------------------------------------------------------------------ item vectors
    def refresh_text_cache(self) -> None:
        """Re-encode every item's text with the current weights (no gradient, eval mode)."""
        self._text_cache = self.text.encode_all()
        self._cache_weights = [p.detach().clone() for p in self._encoder_params]
        self._steps_since_refresh = 0

    def _cache_encodes(self, state: dict[str, torch.Tensor]) -> bool:
        """Whether the catalogue cache was encoded with the encoder weights of ``state`` (a
        checkpoint's state_dict): then loading it needs no new encoding."""
        if self._text_cache is None or self._cache_weights is None:
            return False
        return all(name in state and torch.equal(state[name].to(kept.device), kept)
                   for name, kept in zip(self._encoder_names, self._cache_weights))

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

    def _item_vectors(self, text: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """(n, d) unit item vectors from the (n, H) text vectors of ``items`` (None: all)."""
        vectors = nn.functional.normalize(text + self.adapter(text), dim=-1)
        if self.ids is not None:
            if not bool(self.ids.initialised):
                self.ids.initialise(nn.functional.normalize(self._cached_text(), dim=-1))
            text_only = None
            if self.training and self.id_dropout > 0:  # items played cold this step
                text_only = torch.rand(len(vectors), device=vectors.device) < self.id_dropout
            vectors = nn.functional.normalize(self.ids(vectors, items, text_only), dim=-1)
        return vectors

    def _place_cold_items(self, text: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """(n_items, d) ``vectors`` with every untrained item's row moved from its text
        vector by the weighted offset of its ``cold_neighbours`` nearest trained items (by
        text; see the module docstring). ``text``: (n_items, d) unit text vectors after the
        adapter; ``vectors``: the (n_items, d) unit item vectors."""
        cold = (~self.trained_items).nonzero().flatten()  # (n_cold,)
        warm = self.trained_items.nonzero().flatten()  # (n_warm,)
        if self.cold_neighbours <= 0 or self.ids is None or not len(cold) or not len(warm):
            return vectors
        similarity = text[cold] @ text[warm].T  # (n_cold, n_warm)
        nearest, index = similarity.topk(min(self.cold_neighbours, len(warm)), dim=1)
        weight = torch.softmax(nearest / self.temperature, dim=1)  # (n_cold, k)
        neighbours = warm[index]  # (n_cold, k)
        offset = (weight[..., None] * (vectors[neighbours] - text[neighbours])).sum(1)
        vectors = vectors.clone()
        vectors[cold] = nn.functional.normalize(text[cold] + offset, dim=-1)  # (n_cold, d)
        return vectors

    def item_table(self) -> torch.Tensor:
        """(n_items + 1, d) item vectors from the catalogue cache, with a zero padding row
        (no gradient reaches the encoder through it). Out of training, untrained (cold) items
        are placed by their text neighbours (`_place_cold_items`); in training they are
        nobody's target, negative or input, so their rows are left as they are.

        While the weights hold (`hold_weights`: a validation or test stage, a served run) the
        table is built at the first call and kept: it reads the whole catalogue (the adapter,
        the ID gate, the cold items' neighbours), work that every batch of users repeated
        before."""
        if self.training or torch.is_grad_enabled() or not self._weights_held:
            return self._build_item_table()
        if self._held_table is None:
            self._held_table = self._build_item_table()
        return self._held_table

    def _build_item_table(self) -> torch.Tensor:
        """`item_table`, computed."""
        text = self._cached_text()
        vectors = self._item_vectors(text)  # (n_items, d)
        if not self.training and self.cold_neighbours > 0:
            adapted = nn.functional.normalize(text + self.adapter(text), dim=-1)
            vectors = self._place_cold_items(adapted, vectors)
        return torch.cat([vectors, vectors.new_zeros(1, vectors.shape[1])])

    def fresh_item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(n, d) vectors of ``items`` encoded now by the current weights, with gradient through
        the trainable encoder layers (from the cache when the encoder is frozen: the same)."""
        text = self.text(items) if self._encoder_trains else self._cached_text()[items]
        return self._item_vectors(text, items)

    def item_embeddings(self) -> torch.Tensor:
        """(n_items, d) the item vectors users are scored against (for ``rerank=mmr``)."""
        return self.item_table()[:-1]

    def user_states(self, table: torch.Tensor, sequence: torch.Tensor,
                    pad: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L', d) user states of the newest L' positions of a left-padded item sequence
        (B, L): at most ``max_len``, without the oldest columns that are padding in every row
        (`CausalUserTower.fit_length`; their states were never read). ``sequence`` indexes the
        rows of ``table``; ``pad`` (B, L) marks the padding (None: the catalogue's pad item)."""
        if pad is None:
            pad = sequence == self.info.pad_item
        sequence, pad = self.user_tower.fit_length(sequence, pad)
        items = rows(table, sequence)  # (B, L', d), padding rows are zero
        length = items.shape[1]
        lag = torch.arange(length, device=items.device)
        lag = lag[:, None] - lag[None, :]  # (L, L): how far key j lies before query t
        weights = self.lag_weight[lag.clamp(min=0)] * (lag >= 0)  # (L, L), causal
        recent = torch.einsum("tj,bjd->btd", weights.to(items.dtype), items)  # (B, L, d)
        learned = self.user_out(self.user_tower(self.user_in(items), pad))  # (B, L, d)
        return nn.functional.normalize(recent + learned, dim=-1)

    def _input_states(self, sequence: torch.Tensor) -> torch.Tensor:
        """`user_states` of a training ``sequence`` (B, L) from the vectors of its own items
        alone (the same as `item_table`'s rows of them): the step of a sampled softmax then
        costs what its batch holds, not the catalogue (the 10^6 shop's 46,600 items: every
        item's vector, forward and backward, was most of a 2 s step)."""
        pad = sequence == self.info.pad_item
        items, index = torch.unique(sequence[~pad], return_inverse=True)  # (n,), (kept,)
        vectors = self._item_vectors(self._cached_text()[items], items)  # (n, d)
        table = torch.cat([vectors, vectors.new_zeros(1, vectors.shape[1])])
        local = torch.full_like(sequence, len(items))  # padding: the zero row
        local[~pad] = index
        return self.user_states(table, local, pad)

    def newest_states(self, table: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        """(B, d) each user's state at the newest position (what scores the catalogue). The
        users go through the tower in groups of similar history length, each group as wide as
        its own longest history, not the batch's (`by_history_length`)."""
        return by_history_length(sequence[:, -self.max_len:], self.info.pad_item,
                                 lambda group, history: self.user_states(table, history)[:, -1])

    # ------------------------------------------------------------------ training
    def train_view(self) -> TrainView:
        return TrainView("sequences", batch_size=self.batch_size, max_len=self.max_len)

    def _fresh_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """The distinct targets of the fresh softmax: all of them when the encoder is frozen
        (nothing to encode), else at most ``max_fresh_items`` (a random subset)."""
        items = torch.unique(targets)
        if self._encoder_trains and len(items) > self.max_fresh_items:
            items = items[torch.randperm(len(items), device=items.device)[:self.max_fresh_items]]
        return items

    def _fresh_loss(self, states: torch.Tensor, targets: torch.Tensor,
                    encoder_only: bool = False) -> torch.Tensor:
        """Softmax over the fresh targets plus ``n_negatives`` uniform draws, all encoded by
        the current weights, with the log-Q correction of the two samplers (mixed negative
        sampling: Yang et al., WWW 2020; Yi et al., RecSys 2019). ``encoder_only``: the loss
        that trains the encoder beside the catalogue's (its targets weighted by
        ``fresh_weighting``); otherwise it is the whole loss (``negatives`` sampled/in_batch)."""
        chosen = self._fresh_targets(targets)
        keep = torch.isin(targets, chosen)
        states, targets = states[keep], targets[keep]  # (M, d), (M,)
        pool = self.trained_items.nonzero().flatten()
        n_drawn = self.n_negatives if self.negatives != "in_batch" else 0
        drawn = pool[torch.randint(len(pool), (n_drawn,), device=pool.device)]
        candidates = torch.unique(torch.cat([chosen, drawn]))  # (C,)
        vectors = self.fresh_item_vectors(candidates)  # (C, d)
        # expected times each candidate is drawn: as one of M targets, and uniformly
        expected = len(targets) * self.target_share[candidates] + n_drawn / len(pool)
        logits = states @ vectors.T / self.temperature - expected.log()  # (M, C)
        weight = None
        if encoder_only and self.fresh_weighting == "text_share" and self.ids is not None:
            weight = 1 - self.ids.gate()[targets].detach()  # (M,): how much each is its text
        # over the candidates' columns alone (the shared loss adds debiasing per item): an
        # (M, n_items) matrix of -inf around them filled ~0.2 s of a step at 46,600 items
        return self.cross_entropy_loss(logits, targets, weight=weight, columns=candidates)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        sequence, target = batch["input"], batch["target"]  # (B, L), (B, L) with -100 = none
        sequence, target = sequence[:, -self.max_len:], target[:, -self.max_len:]
        valid = target != -100
        targets = target[valid]  # (N,)
        if self.negatives == "catalogue":
            table = self.item_table()  # (n_items + 1, d), every row from the same weights
            states = self.user_states(table, sequence)  # (B, L', d), the newest L' columns
        else:  # a sampled softmax reads the vectors of the step's own items only
            table, states = None, self._input_states(sequence)
        # a target follows an input item, so none lies in the all-padding columns left out
        states = states[valid[:, -states.shape[1]:]]  # (N, d)
        if table is None:
            return self._fresh_loss(states, targets)
        logits = states @ table[:-1].T / self.temperature  # (N, n_items)
        candidates = self.trained_items.clone()
        candidates[targets] = True
        loss = self.cross_entropy_loss(logits.masked_fill(~candidates, -math.inf), targets)
        if self._encoder_trains:  # the cache gives the encoder no gradient: a fresh softmax does
            loss = loss + self._fresh_loss(states if self.fresh_user_grad else states.detach(),
                                           targets, encoder_only=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self._steps_since_refresh += int(self._encoder_trains)

    def on_fit_start(self) -> None:
        trainer = self.trainer
        self._eta_logged = False
        if self.max_epochs is not None and not 0 <= trainer.max_epochs <= self.max_epochs:
            log.info("bert_finetune: at most %d epochs (model.max_epochs; trainer.max_epochs "
                     "was %s)", self.max_epochs, trainer.max_epochs)
            trainer.fit_loop.max_epochs = self.max_epochs
        if self.patience is not None:
            from lightning.pytorch.callbacks import EarlyStopping

            for callback in trainer.callbacks:
                if isinstance(callback, EarlyStopping) and callback.patience != self.patience:
                    log.info("bert_finetune: early stopping after %d epochs without a better %s "
                             "(model.patience; the callback said %d)", self.patience,
                             callback.monitor, callback.patience)
                    callback.patience = self.patience

    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()
        self._release_weights()  # were an evaluation stage left without its end hook
        if self._steps_since_refresh > 0:  # no evaluation refreshed it since the last epoch
            self.refresh_text_cache()

    def on_train_epoch_end(self) -> None:
        # Lightning calls this after the epoch's validation: the time covers both
        trainer = self._trainer
        if trainer is None or self._epoch_started is None:
            return
        seconds, self._epoch_started = time.perf_counter() - self._epoch_started, None
        if self._eta_logged or trainer.max_epochs < 0:
            return
        self._eta_logged = True  # once per fit: after its first epoch
        left = max(int(trainer.max_epochs) - trainer.current_epoch - 1, 0)
        log.info("bert_finetune: epoch %d took %.0f s with validation; at most %d more "
                 "(early stopping may end it sooner): about %.1f min left, then the test",
                 trainer.current_epoch + 1, seconds, left, left * seconds / 60)

    def hold_weights(self) -> None:
        """The weights hold from now on, until `_release_weights`: for good in a served run,
        to its end in an evaluation stage (the average's weights, where one is kept, are
        swapped in by its start); `item_table` keeps what it builds meanwhile."""
        self._weights_held, self._held_table = True, None

    def _release_weights(self) -> None:
        self._weights_held, self._held_table = False, None

    def on_validation_epoch_start(self) -> None:
        self.hold_weights()

    def on_validation_epoch_end(self) -> None:
        self._release_weights()

    def on_test_epoch_start(self) -> None:
        self.hold_weights()

    def on_test_epoch_end(self) -> None:
        self._release_weights()

    def load_weights(self, path: str) -> None:
        """Start from the weights of the bert_finetune checkpoint at ``path`` (``init_from``)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        except FileNotFoundError:
            raise ValueError(f"model.init_from: no checkpoint at '{path}'") from None
        except KeyError:
            raise ValueError(f"model.init_from: '{path}' holds no 'state_dict' (expected a "
                             "Lightning checkpoint such as <run>/checkpoints/best.ckpt)") from None
        own = self.state_dict()
        # not the post-hoc τ: the earlier run chose it for its own weights, after training;
        # carried over, every validation of this run would score with it (0 while training)
        shared = {k: v for k, v in state.items()
                  if k in own and own[k].shape == v.shape and k != "posthoc_tau"}
        if not any(k.startswith(("user_tower.", "adapter.")) for k in shared):
            raise ValueError(f"model.init_from: '{path}' is not a bert_finetune checkpoint for "
                             f"this data (none of its {len(state)} weights fit this model)")
        self.load_state_dict(shared, strict=False)
        self._text_cache = None
        log.info("bert_finetune: %d of %d weights start from %s", len(shared), len(own), path)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._held_table = None
        if self._cache_encodes(checkpoint.get("state_dict", {})):
            # the weights the cache was encoded with: the frozen phase's best checkpoint, loaded
            # for the choice on validation, the final validation and the test (a re-encoding of
            # the catalogue each: Amazon Scientific 3.6-3.9 s, 46,600 items 22-24 s)
            self._steps_since_refresh = 0
        else:
            self._text_cache = None  # new weights: re-encode on first use

    def text_is_weak(self) -> bool:
        """Whether the item text says too little about the interactions to lean on (measured
        once, from the untrained text vectors and ``DatasetInfo.train_pairs``; see
        ``weak_text``). Logs the answer and its reason."""
        if self._text_is_weak is not None:
            return self._text_is_weak
        if self.weak_text != "auto":
            self._text_is_weak = bool(self.weak_text)
            why = f"model.weak_text={str(self.weak_text).lower()}"
        elif self.info.train_pairs is None:
            self._text_is_weak = False
            why = "not measured: no training pairs (DatasetInfo.train_pairs), text trusted"
        else:
            with torch.no_grad():
                self.text_auc = user_text_auc(self._cached_text(), self.info.train_pairs)
            if self.text_auc is None:
                self._text_is_weak = False
                why = "not measured: fewer than 10 users with two distinct items, text trusted"
            else:
                self._text_is_weak = self.text_auc < self.weak_text_auc
                why = (f"same-user text AUC {self.text_auc:.3f} "
                       f"{'<' if self._text_is_weak else '>='} model.weak_text_auc "
                       f"{self.weak_text_auc:g}")
        log.info("bert_finetune: item text is %s (%s)", "weak" if self._text_is_weak
                 else "informative", why)
        return self._text_is_weak

    def ids_learning_rate(self) -> float | None:
        """The ID embeddings' learning rate: ``id_lr`` when set; ``weak_text_id_lr`` where the
        text is weak (`text_is_weak`); None (the optimizer's own) otherwise."""
        if self.ids is None:
            return None
        if self.id_lr is not None:
            return self.id_lr
        if self.text_is_weak():
            log.info("bert_finetune: the ID embeddings learn at model.weak_text_id_lr=%g to "
                     "carry the model where text cannot (model.weak_text=false: optimizer.lr)",
                     self.weak_text_id_lr)
            return self.weak_text_id_lr
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        encoder = [p for p in self.text.parameters() if p.requires_grad]
        id_lr = self.ids_learning_rate()
        ids = [self.ids.embedding.weight] if self.ids is not None and id_lr else []
        groups = [{"params": encoder, "lr": self.encoder_lr, "name": "encoder"},
                  {"params": ids, "lr": id_lr, "name": "ids"}]
        return self.with_lr_scheduler(grouped_optimizer(self.optimizer_factory, self, groups))

    # ------------------------------------------------------------------ scoring
    def score(self, batch: EvalBatch) -> torch.Tensor:
        table = self.item_table()  # (n_items + 1, d)
        user = self.newest_states(table, batch.history)  # (B, d)
        scores = batch.dot_scores(user, table[:-1]).div_(self.temperature)  # (B, n_items)
        offsets = posthoc_offsets(self.item_popularity, float(self.posthoc_tau))
        return scores if offsets is None else scores.add_(offsets)

    def choose_on_validation(self, validate: Callable[[], float]) -> dict[str, Any]:
        """With ``posthoc_adjustment: auto``: τ rises through ``posthoc_grid`` while the
        validation value stays within ``posthoc_tolerance`` of τ = 0's (the plain scores), and
        the last τ within it is kept: the rule the fixed default of 0.2 was chosen by across
        four datasets, applied to the run's own data. Where popularity is what the held-out
        items follow (ml-100k's random split) it keeps the plain scores; where the correction
        costs nothing it goes on correcting (a small Online Retail sample: level up to τ .4,
        within 1% at .5). The first τ outside the tolerance ends the search: a larger τ that
        scores within it again is noise past the model's optimum, not a choice (and is not
        tried)."""
        if not self.posthoc_auto:
            return {}
        values: dict[float, float] = {}
        chosen = 0.0
        for tau in sorted(self.posthoc_grid):  # 0 first: the reference
            self.posthoc_tau.fill_(tau)
            values[tau] = float(validate())
            reference = values[0.0]
            if not (math.isfinite(reference)
                    and values[tau] >= reference - self.posthoc_tolerance * abs(reference)):
                break
            chosen = tau
        self.posthoc_tau.fill_(chosen)
        log.info("bert_finetune: post-hoc adjustment τ = %g, chosen on validation (the largest "
                 "of a rising τ within %g%% of τ = 0; validation value at τ %s: %s)", chosen,
                 100 * self.posthoc_tolerance, "/".join(f"{t:g}" for t in values),
                 "/".join(f"{v:.4f}" for v in values.values()))
        return {"posthoc_adjustment": chosen,
                "posthoc_validation": {f"{t:g}": v for t, v in values.items()}}
