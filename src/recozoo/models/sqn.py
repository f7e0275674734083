"""SQN and DQN: Q-learning recommenders trained on logged sessions, with a long-tail reward.

Xin et al., "Self-Supervised Reinforcement Learning for Recommender Systems", SIGIR 2020 (SQN).
A sequential encoder (GRU by default, the zoo's shared `GRUEncoder`) maps the recent items to a
state ``s_t``. Two heads read it:

* a supervised head, trained with softmax cross-entropy on the next item; as in GRU4Rec's
  reference code its item weights are the input item embeddings (plus an item bias);
* a Q-head ``Q(s_t, a)`` over all items, trained by double Q-learning on the logged transitions
  ``(s_t, a_t = next item, r_t, s_{t+1})`` with a target network (soft or periodic updates):
  ``Q(s_t, a_t) <- r_t + gamma * Q_target(s_{t+1}, argmax_a Q(s_{t+1}, a))``.

Both losses flow into the shared encoder, so the Q-learning signal shapes the states the
supervised head ranks from. The reward of a logged action is its event weight
(purchase > cart > view; data without event types count every event as a view) plus a bonus
``tail_bonus`` (lambda) when the item is in the long tail.

Each state also learns from ``n_negatives`` sampled items the user did not take: reward 0 and
an unchanged state, as in the negative-sampling SNQN of Xin et al., "Supervised Advantage
Actor-Critic for Recommender Systems", WSDM 2022. Without them the Q-head only ever sees logged
actions (all with positive rewards), so the values of every other item stay untrained and
adding Q to a ranking favours whichever items happen to be logged. With them, ``Q(s, a) -
gamma * V(s)`` grows with the reward of ``a`` times how likely ``a`` is next: a reward-weighted
relevance. Ranking by ``mix`` (``log_softmax(supervised) + mix_weight * Q``) therefore keeps the
supervised ranking and moves tail items that fit the session up as lambda grows; the paper's
own choice, ranking by the supervised head alone, is ``rank_head=supervised``. How much Q should
weigh differs between data, so with ``mix_grid`` the run trains and early-stops at ``mix_weight``
and then takes the weight of the grid with the best validation value, with the best weights
(`choose_on_validation`; the checkpoint keeps it, so the test and serving score with it).

``supervised=False`` with ``rank_head=q`` is pure (double) DQN on logged data: the ``dqn``
config. All positions of a training window are trained in one pass: the encoder runs once over
the window plus its last target, so the state of position t and the next state (t + 1) come
from the same forward pass. There is no environment: transitions come from the logs.

Both heads cost O(states x n_items) per batch. Above ``SAMPLED_SOFTMAX_ABOVE`` items (or with
``sampled_softmax=true``) a batch draws ``n_sampled`` actions shared by all its states, as the
sequential models' sampled softmax does: the supervised head takes the log-Q corrected sampled
softmax, and Q is computed for the logged actions, the ignored items and that sample alone; the
double-Q argmax over next actions is taken within the sample (a sampled max, as in Q-learning
over large action sets).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from recozoo.data.datamodule import DatasetInfo, EvalBatch, TrainView
from recozoo.models.base import Recommender
from recozoo.models.components.lookup import entries, rows
from recozoo.models.components.q_heads import (
    EventReward,
    QNetwork,
    TargetNetwork,
    double_q_target,
    rewards_with_mean,
)
from recozoo.models.components.sequence import (
    CausalTransformerEncoder,
    GRUEncoder,
    NegativeSampler,
)
from recozoo.models.optimizers import dense_optimizer
from recozoo.models.sequential import SAMPLED_SOFTMAX_ABOVE

log = logging.getLogger(__name__)

RankHead = Literal["supervised", "q", "mix"]
DEFAULT_REWARD = {"view": 0.2, "cart": 0.5, "purchase": 1.0}


class SQN(Recommender):
    """Self-supervised Q-learning recommender (or pure DQN with ``supervised=False``).

    Args:
        dim: item embedding and state size.
        encoder: ``gru`` (GRU4Rec's encoder) or ``transformer`` (SASRec's causal encoder).
        num_layers: encoder layers.
        dropout: encoder dropout (on the input embeddings, and between layers).
        dropout_hidden: dropout on the states before the heads.
        max_len: most recent items the encoder reads (training windows and evaluation alike).
        batch_size: training windows per batch.
        supervised: keep the supervised next-item head (SQN) or not (DQN).
        rank_head: what ranks items: ``supervised`` logits, ``q`` values, or ``mix``:
            ``log_softmax(supervised) + mix_weight * Q``.
        mix_weight: weight of the Q-values in ``mix`` (with ``mix_grid``: the weight training
            validates with, and the one kept unless a weight of the grid validates better).
        mix_grid: weights of the Q-values that ``mix`` ranking tries after training, on
            validation with the best weights, keeping the best (None: ``mix_weight`` stays).
        reward: reward per event name (``view``, ``cart``, ``purchase``).
        reward_mean: scale the rewards so that the average logged training event earns this
            (`rewards_with_mean`; the tail bonus is added unscaled); None: as given.
        tail_bonus: reward bonus lambda for tail items.
        gamma: discount.
        q_weight: weight of the TD loss next to the cross-entropy.
        n_negatives: sampled unlogged actions per state, with reward 0 (0: none).
        target_tau: Polyak weight of a target update (1.0: copy).
        target_every: optimiser steps between target updates.
        grad_clip: gradient-norm clipping (None: off).
        sampled_softmax: train over ``n_sampled`` actions drawn per batch instead of the
            catalogue (None: above ``SAMPLED_SOFTMAX_ABOVE`` items, as the sequential models):
            the supervised head's sampled softmax (log-Q corrected) and Q-values of the logged
            actions, the sampled ignored items and the sample alone, where the double-Q argmax
            over next actions is taken. Evaluation always scores the whole catalogue.
        n_sampled, negative_sampling: the sample's size and distribution (`NegativeSampler`).

    Example:
        >>> model = SQN(info, tail_bonus=1.0)          # SQN ranking by the mixed score
        >>> dqn = SQN(info, supervised=False, rank_head="q", n_negatives=10)
    """

    scores_new_users = True  # scores read only the history

    def __init__(self, info: DatasetInfo, dim: int = 100, encoder: str = "gru",
                 num_layers: int = 1, dropout: float = 0.0, dropout_hidden: float = 0.2,
                 max_len: int = 50, batch_size: int = 128, supervised: bool = True,
                 rank_head: RankHead = "mix",
                 mix_weight: float = 1.0, mix_grid: Sequence[float] | None = None,
                 reward: Mapping[str, float] | None = None, reward_mean: float | None = None,
                 tail_bonus: float = 0.0, gamma: float = 0.5, q_weight: float = 1.0,
                 n_negatives: int = 10, target_tau: float = 0.01, target_every: int = 1,
                 grad_clip: float | None = None, sampled_softmax: bool | None = None,
                 n_sampled: int = 1000, negative_sampling: str = "popularity", **kwargs):
        super().__init__(info, **kwargs)
        self.automatic_optimization = False
        if rank_head not in ("supervised", "q", "mix"):
            raise ValueError(f"model.rank_head must be 'supervised', 'q' or 'mix', got "
                             f"'{rank_head}'")
        if rank_head != "q" and not supervised:
            raise ValueError(f"model.rank_head='{rank_head}' needs the supervised head; set "
                             "model.supervised=true or model.rank_head=q")
        if max_len < 2:
            raise ValueError(f"model.max_len must be >= 2, got {max_len}")
        self.max_len, self.batch_size = int(max_len), int(batch_size)
        self.rank_head = rank_head
        self.mix_grid = None if mix_grid is None else tuple(float(w) for w in mix_grid)
        if self.mix_grid is not None and (not self.mix_grid or min(self.mix_grid) < 0
                                          or not all(map(math.isfinite, self.mix_grid))):
            raise ValueError("model.mix_grid must list finite weights >= 0 (or be null), got "
                             f"{list(mix_grid)}")
        #: whether the mix weight is chosen on validation after training (`choose_on_validation`)
        self.chooses_mix = self.mix_grid is not None and rank_head == "mix"
        if self.chooses_mix:
            # the weight in use is state, so the best checkpoint keeps the one chosen
            self.register_buffer("mix_weight", torch.tensor(float(mix_weight), dtype=torch.float64))
        else:
            self.mix_weight = float(mix_weight)
        self.trained_mix_weight = float(mix_weight)
        self.gamma, self.q_weight = float(gamma), float(q_weight)
        self.n_negatives, self.grad_clip = int(n_negatives), grad_clip
        if n_sampled < 1:
            raise ValueError(f"model.n_sampled must be >= 1, got {n_sampled}")
        self.sampled_softmax = (info.n_items > SAMPLED_SOFTMAX_ABOVE if sampled_softmax is None
                                else bool(sampled_softmax))
        self.n_sampled = int(n_sampled)
        self.negative_sampler = NegativeSampler(info.item_popularity, negative_sampling)
        self.q_network = QNetwork(_sequence_encoder(encoder, info.n_items, dim, num_layers,
                                                    dropout, max_len), dim, info.n_items)
        self.hidden_dropout = nn.Dropout(dropout_hidden)
        # the supervised head is tied to the input item embeddings plus an item bias (GRU4Rec's
        # "constrained embedding"); the Q-head has its own weights (values are not logits)
        self.supervised_bias = nn.Parameter(torch.zeros(info.n_items)) if supervised else None
        self.target = TargetNetwork(self.q_network, tau=target_tau, every=target_every)
        weights = dict(reward or DEFAULT_REWARD)
        if reward_mean is not None:
            weights, factor = rewards_with_mean(weights, info.event_counts, float(reward_mean))
            # without counts (data without event types, or a model rebuilt from a run folder to
            # serve, where rewards are unused) every event is a view
            counted = ("" if info.event_counts is not None
                       else " (no event counts: every event taken as a view)")
            log.info("sqn: event rewards x%.3g, so the average logged event earns %g%s: %s",
                     factor, reward_mean, counted,
                     ", ".join(f"{k} {v:.3g}" for k, v in weights.items()))
        self.reward = EventReward(weights, info.tail_mask, tail_bonus)

    def train_view(self) -> TrainView:
        # a window of max_len - 1 inputs plus its last target is what the encoder reads
        return TrainView("sequences", batch_size=self.batch_size, max_len=self.max_len - 1)

    # ------------------------------------------------------------------ training
    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss terms of one batch of windows: ``loss`` (total), ``ce``, ``td``."""
        target = batch["target"]  # (B, L), -100 where ignored
        valid = target >= 0  # (B, L)
        last = torch.where(valid[:, -1:], target[:, -1:], self.info.pad_item)  # (B, 1)
        seq = torch.cat([batch["input"], last], dim=1)  # (B, L + 1)
        states = self.hidden_dropout(self.q_network(seq))  # (B, L + 1, dim)
        action, event = target[valid], batch["event"][valid]  # (N,)
        state = states[:, :-1][valid]  # (N, dim) s_t
        # rows of the states that are a current (t) or a next (t + 1) state, each once
        no = torch.zeros_like(valid[:, :1])
        needed = torch.cat([valid, no], 1) | torch.cat([no, valid], 1)  # (B, L + 1)
        row = torch.full(needed.shape, -1, dtype=torch.long, device=seq.device)
        row[needed] = torch.arange(int(needed.sum()), device=seq.device)
        now, after = row[:, :-1][valid], row[:, 1:][valid]  # (N,) rows of s_t and s_{t+1}
        # the actions Q is computed for: the catalogue, or a sample shared by the batch
        sample = self.negative_sampler(self.n_sampled) if self.sampled_softmax else None
        item = (lambda column: column) if sample is None else (lambda column: sample[column])
        with torch.no_grad():
            # the online network's greedy action in each state (double Q: it chooses, the
            # target values); only these need the whole catalogue's (or sample's) Q-values, so
            # they take no gradient, and the loss reads Q at single actions
            greedy = item(self.q_network.q_values(states[needed], sample).argmax(-1))  # (M,)
            target_states = self.target(seq)[needed]  # (M, dim)
        target_q = self.target.network.q_at
        td_target = double_q_target(self.reward(action, event), greedy[after],
                                    lambda a: target_q(target_states[after], a), self.gamma)
        td = (self.q_network.q_at(state, action) - td_target).pow(2).mean()
        if self.n_negatives:
            # an ignored recommendation: reward 0, the state stays s_t
            negative = torch.randint(0, self.n_items, (len(action), self.n_negatives),
                                     device=action.device)  # (N, n_neg)
            stay = double_q_target(torch.zeros_like(td_target), greedy[now],
                                   lambda a: target_q(target_states[now], a), self.gamma)
            ignored = self.q_network.q_at(state, negative)  # (N, n_neg)
            td = td + (ignored - stay[:, None]).pow(2).mean()
        out = {"td": td, "loss": self.q_weight * td}
        if self.supervised_bias is not None:
            if sample is None:
                out["ce"] = self.cross_entropy_loss(self.supervised_logits(state), action)
            else:
                pos = (state * rows(self.q_network.encoder.embedding.items, action)).sum(-1)
                out["ce"] = self.sampled_cross_entropy_loss(
                    pos + entries(self.supervised_bias, action), self.supervised_logits(state, sample),
                    action, sample, self.negative_sampler.log_q)
            out["loss"] = out["loss"] + out["ce"]
        return out

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.losses(batch)["loss"]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        losses = self.losses(batch)
        optimizer.zero_grad()
        self.manual_backward(losses["loss"])
        if self.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip,
                                gradient_clip_algorithm="norm")
        optimizer.step()
        self.target.update(self.q_network)
        self.log_train({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=False,
                      batch_size=len(batch["user"]))
        return losses["loss"].detach()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return dense_optimizer(self.optimizer_factory,
                               [p for p in self.parameters() if p.requires_grad])

    # ------------------------------------------------------------------ ranking
    def score(self, batch: EvalBatch) -> torch.Tensor:
        """The ranking head's (B, n_items) scores, computed in the memory the batch offers
        (`EvalBatch.dot_scores`) and changed there in place: ``mix`` normalises the supervised
        logits and adds the weighted Q-values into the same matrix instead of making three
        more. One batch of the 10^6 shop's shape (1,440 x 46,600, dim 64, 2 threads): ``mix``
        295 ms against 530, ``supervised`` 86 against 174 (reused against fresh memory)."""
        state = self.q_network.last_state(batch.history[:, -self.max_len:])  # (B, dim)
        head = self.q_network.head  # the Q-values: a linear layer over the items
        if self.rank_head == "q":
            return batch.dot_scores(state, head.weight, head.bias)  # (B, n_items)
        logits = batch.dot_scores(state, self.q_network.encoder.embedding.items,
                                  self.supervised_bias)  # (B, n_items)
        if self.rank_head == "supervised":
            return logits
        mix = float(self.mix_weight)
        if torch.is_grad_enabled() and logits.requires_grad:  # in place would break backward
            return logits.log_softmax(-1) + mix * self.q_network.q_values(state)
        logits = logits.sub_(torch.logsumexp(logits, -1, keepdim=True))  # log_softmax
        return logits.addmm_(state, head.weight.T, alpha=mix).add_(head.bias, alpha=mix)

    def choose_on_validation(self, validate: Callable[[], float]) -> dict[str, Any]:
        """With ``mix_grid`` (and ``mix`` ranking): the weight of the Q-values with the best
        validation value, ``mix_weight`` (what training validated with) unless another is
        strictly better."""
        if not self.chooses_mix:
            return {}
        values: dict[float, float] = {}
        for weight in (self.trained_mix_weight, *self.mix_grid):
            if weight not in values:
                self.mix_weight.fill_(weight)
                values[weight] = float(validate())
        finite = {w: v for w, v in values.items() if math.isfinite(v)}
        chosen = max(finite, key=finite.__getitem__, default=self.trained_mix_weight)
        self.mix_weight.fill_(chosen)
        log.info("sqn: mix weight of the Q-values %g, chosen on validation (value at %s: %s)",
                 chosen, "/".join(f"{w:g}" for w in sorted(values)),
                 "/".join(f"{values[w]:.4f}" for w in sorted(values)))
        return {"mix_weight": chosen,
                "mix_validation": {f"{w:g}": values[w] for w in sorted(values)}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint from before ``mix_grid`` holds no chosen weight: it scored with
        ``mix_weight``, the weight it was trained and validated with."""
        state = checkpoint.get("state_dict")
        if self.chooses_mix and state is not None:
            state.setdefault("mix_weight", torch.tensor(self.trained_mix_weight,
                                                        dtype=torch.float64))

    def supervised_logits(self, states: torch.Tensor, items: torch.Tensor | None = None,
                          ) -> torch.Tensor:
        """(..., n_items) next-item logits of the supervised head from (..., dim) states, or
        (..., n) of the items ``items`` (n,) alone."""
        weights, bias = self.q_network.encoder.embedding.items, self.supervised_bias
        if items is None:
            return states @ weights.T + bias
        return states @ rows(weights, items).T + entries(bias, items)

    @property
    def n_params(self) -> int:
        """Trainable parameters (the target network is a copy and not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _sequence_encoder(kind: str, n_items: int, dim: int, num_layers: int, dropout: float,
                      max_len: int) -> nn.Module:
    """The zoo's shared sequence encoder named by ``kind`` (``gru`` or ``transformer``)."""
    if kind == "gru":
        return GRUEncoder(n_items, dim, num_layers=num_layers, dropout=dropout)
    if kind == "transformer":
        return CausalTransformerEncoder(n_items, dim, num_layers=num_layers, max_len=max_len,
                                        dropout=dropout)
    raise ValueError(f"model.encoder must be 'gru' or 'transformer', got '{kind}'")
