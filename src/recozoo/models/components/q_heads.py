"""Q-learning parts of the reinforcement-learning recommenders (SQN/DQN): plain nn.Modules.

* `EventReward`: the reward of a logged action, from its event type plus a long-tail bonus.
* `QNetwork`: a sequence encoder with a linear Q-head, ``Q(s_t, a)`` for every item ``a``.
* `TargetNetwork`: a frozen copy of a network, updated softly or periodically from the online
  one; its weights and update counter are buffers/parameters of the module, so they are saved
  in and restored from checkpoints.
* `double_q_target`: the double Q-learning TD target.

References: Mnih et al., "Human-level control through deep reinforcement learning", Nature
2015 (target network); van Hasselt et al., "Deep Reinforcement Learning with Double
Q-learning", AAAI 2016 (double Q target); Xin et al., "Self-Supervised Reinforcement Learning
for Recommender Systems", SIGIR 2020 (rewards from logged clicks and purchases).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from recozoo.data.interactions import EVENT_NAMES
from recozoo.models.components.lookup import entries, rows


class EventReward(nn.Module):
    """Reward of a logged action: ``weight[event] + tail_bonus * is_tail(item)``.

    Args:
        weights: reward per event name (``view``, ``cart``, ``purchase``); every name of
            ``EVENT_NAMES`` must be given. Data without event types serve every event as a view.
        tail_mask: (n_items,) True for tail items.
        tail_bonus: the bonus ``lambda`` added for a tail item.

    Example:
        >>> reward = EventReward({"view": 0.2, "cart": 0.5, "purchase": 1.0},
        ...                      torch.tensor([False, True]), tail_bonus=1.0)
        >>> reward(torch.tensor([0, 1]), torch.tensor([2, 0]))
        tensor([1.0000, 1.2000])
    """

    def __init__(self, weights: Mapping[str, float], tail_mask: torch.Tensor,
                 tail_bonus: float = 0.0):
        super().__init__()
        missing = [name for name in EVENT_NAMES if name not in weights]
        unknown = [name for name in weights if name not in EVENT_NAMES]
        if missing or unknown:
            raise ValueError(f"reward weights must name exactly the events {list(EVENT_NAMES)}; "
                             f"missing {missing}, unknown {unknown} (model.reward)")
        self.tail_bonus = float(tail_bonus)
        self.register_buffer("event_weight", torch.tensor(
            [float(weights[name]) for name in EVENT_NAMES]), persistent=False)
        self.register_buffer("tail_mask", tail_mask.bool(), persistent=False)

    def forward(self, item: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        """Rewards (same shape as ``item``) of actions ``item`` logged with event codes ``event``."""
        return self.event_weight[event] + self.tail_bonus * self.tail_mask[item].float()


def rewards_with_mean(weights: Mapping[str, float], event_counts: torch.Tensor | None,
                      mean: float) -> tuple[dict[str, float], float]:
    """``weights`` (reward per event name) scaled so that the average logged event of the
    training data earns ``mean``; returns (scaled weights, the factor applied).

    ``event_counts``: training interactions per event code (`EVENT_NAMES` order), None for
    data without event types (every event a view). A reward table then sets the ratios between
    events and ``mean`` its scale, so one discount and one TD-loss weight mean the same on a log
    of views (reward 0.2 each) and on one of purchases (1.0 each).

    Example:
        >>> rewards_with_mean({"view": 0.2, "cart": 0.5, "purchase": 1.0},
        ...                   torch.tensor([0, 0, 10]), 0.2)[0]["purchase"]
        0.2
    """
    if not (math.isfinite(mean) and mean > 0):
        raise ValueError(f"model.reward_mean must be a positive number or null, got {mean}")
    if event_counts is None or int(event_counts.sum()) == 0:  # views alone
        event_counts = torch.tensor([name == "view" for name in EVENT_NAMES])
    shares = event_counts.double() / event_counts.sum()  # exactly 1.0 for a single event type
    per_event = torch.tensor([float(weights.get(name, 0.0)) for name in EVENT_NAMES],
                             dtype=torch.float64)  # a missing name: EventReward says so
    logged = float(per_event @ shares)  # a single type: its weight, so the factor is exactly 1
    if logged <= 0:
        raise ValueError(f"model.reward_mean={mean}: the logged events earn no reward on "
                         f"average ({dict(weights)}), so no scale reaches it; give the events "
                         "positive rewards or set model.reward_mean=null")
    factor = mean / logged
    return {name: float(value) * factor for name, value in weights.items()}, factor


class QNetwork(nn.Module):
    """A sequence encoder followed by a linear Q-head over all items.

    Args:
        encoder: maps left-padded item sequences (B, L) to states (B, L, dim); its
            ``last_state(seq)`` gives the newest one, (B, dim).
        dim: the encoder's state size.
        n_items: number of actions (items).
    """

    def __init__(self, encoder: nn.Module, dim: int, n_items: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, n_items)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) states after each position of ``seq``."""
        return self.encoder(seq)

    def last_state(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, dim) the state after the newest item of ``seq`` (``forward(seq)[:, -1]``,
        computed for that position alone where the encoder can)."""
        return self.encoder.last_state(seq)

    def q_values(self, states: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """(..., n_items) Q-values of every item in each state (..., dim), or (..., n) of the
        items ``items`` (n,) alone."""
        if items is None:
            return self.head(states)
        return states @ rows(self.head.weight, items).T + entries(self.head.bias, items)

    def q_at(self, states: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Q-values of items per state: states (N, dim) and items (N,) give (N,), one item per
        state; items (N, n) give (N, n)."""
        # `rows`, not ``weight[items]``: a run of one seed gives the same Q-values at 2 threads
        weight = rows(self.head.weight, items)  # (N, dim) or (N, n, dim)
        bias = entries(self.head.bias, items)  # (N,) or (N, n)
        if items.dim() == 2:
            return (states[:, None] * weight).sum(-1) + bias
        return (states * weight).sum(-1) + bias


class TargetNetwork(nn.Module):
    """A frozen copy of ``online`` that follows it by Polyak averaging.

    Every ``every`` optimiser steps: ``target <- (1 - tau) * target + tau * online``. ``tau < 1``
    with ``every = 1`` is a soft update; ``tau = 1`` copies the weights every ``every`` steps (the
    periodic update of DQN). The copy never trains (no gradients, always in eval mode); its
    weights and the step counter ``steps`` are part of the state dict.

    Args:
        online: the network to follow (deep-copied at construction).
        tau: interpolation weight in (0, 1].
        every: steps between updates (>= 1).
    """

    def __init__(self, online: nn.Module, tau: float = 0.01, every: int = 1):
        super().__init__()
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"target update tau must be in (0, 1], got {tau} (model.target_tau)")
        if every < 1:
            raise ValueError(f"target update period must be >= 1 step, got {every} "
                             "(model.target_every)")
        self.tau, self.every = float(tau), int(every)
        self.network = copy.deepcopy(online)
        self.network.requires_grad_(False)
        self.network.eval()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> TargetNetwork:
        """The copy stays in eval mode (no dropout in TD targets)."""
        return super().train(False)

    @torch.no_grad()
    def update(self, online: nn.Module) -> bool:
        """Count one optimiser step; move towards ``online`` when due. Returns whether it did."""
        self.steps += 1
        if int(self.steps) % self.every:
            return False
        target_params = list(self.network.parameters())
        online_params = [p.detach() for p in online.parameters()]
        if len(target_params) != len(online_params):
            raise RuntimeError("online and target networks have different parameters")
        if self.tau == 1.0:
            torch._foreach_copy_(target_params, online_params)
        else:
            torch._foreach_lerp_(target_params, online_params, self.tau)
        for target_buffer, online_buffer in zip(self.network.buffers(), online.buffers()):
            target_buffer.copy_(online_buffer)
        return True

    def forward(self, *args, **kwargs):
        return self.network(*args, **kwargs)


def double_q_target(reward: torch.Tensor, next_action: torch.Tensor,
                    target_q_at: Callable[[torch.Tensor], torch.Tensor], gamma: float,
                    done: torch.Tensor | None = None) -> torch.Tensor:
    """Double Q-learning target ``r + gamma * Q_target(s', argmax_a Q_online(s', a))``.

    The online network chooses the next action and the target network values it, which removes
    the max operator's overestimation (van Hasselt et al., AAAI 2016).

    Args:
        reward: (N,) rewards.
        next_action: (N,) the online network's greedy actions in the next states,
            ``argmax_a Q_online(s', a)`` (the caller takes the argmax, once per distinct state).
        target_q_at: maps actions (N,) to the target network's values of them in the next states
            (N,); only those are needed, not the target's full (N, n_actions).
        gamma: discount.
        done: (N,) True where the episode ends (no bootstrap), or None.

    Returns:
        (N,) targets, detached.

    Example:
        >>> target_q = torch.tensor([[9.0, 2.0]])
        >>> online_q = torch.tensor([[0.0, 5.0]])
        >>> double_q_target(torch.tensor([1.0]), online_q.argmax(-1),
        ...                 lambda a: target_q.gather(1, a[:, None])[:, 0], gamma=0.5)
        tensor([2.])
    """
    with torch.no_grad():
        value = target_q_at(next_action)  # (N,)
        if done is not None:
            value = torch.where(done, torch.zeros_like(value), value)
        return reward + gamma * value
