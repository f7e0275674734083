"""A stack of linear layers with an activation between them, shared by the zoo's networks."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from torch import nn


def mlp(sizes: list[int], activation: type[nn.Module],
        init: Callable[[nn.Linear], None] | None = None) -> nn.Sequential:
    """``Linear(sizes[0], sizes[1]) -> activation -> ... -> Linear(sizes[-2], sizes[-1])``.

    Args:
        sizes: layer widths, input first; the last layer has no activation.
        activation: the module class put between layers (e.g. ``nn.Tanh``).
        init: called on each linear layer right after it is created.
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        linear = nn.Linear(a, b)
        if init is not None:
            init(linear)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)
