"""CFGAN's generator and discriminator (Chae et al., CIKM 2018): plain nn.Modules."""

from __future__ import annotations

import torch
from torch import nn

from recozoo.models.components.mlp import mlp


class VectorGenerator(nn.Module):
    """Generates a user's whole purchase vector from the condition vector ``c_u``.

    CFGAN's generator is vector-wise: one forward pass yields a value for every item. As in the
    authors' code no noise ``z`` is fed (it did not help), the hidden layers use sigmoid and the
    output is linear.

    Args:
        n_items: width of the condition and of the output.
        hidden: hidden layer sizes.
    """

    def __init__(self, n_items: int, hidden: list[int] | tuple[int, ...]):
        super().__init__()
        self.net = mlp([n_items, *hidden, n_items], nn.Sigmoid)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.net(condition)  # (B, n_items)


class ConditionalDiscriminator(nn.Module):
    """Tells real purchase vectors from generated ones, given the condition ``c_u``.

    Args:
        n_items: width of a purchase vector.
        hidden: hidden layer sizes.

    ``forward(vector, condition)`` returns (B,) logits (real = high).
    """

    def __init__(self, n_items: int, hidden: list[int] | tuple[int, ...]):
        super().__init__()
        self.net = mlp([2 * n_items, *hidden, 1], nn.Sigmoid)

    def forward(self, vector: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, vector], dim=1)).squeeze(1)  # (B,)
