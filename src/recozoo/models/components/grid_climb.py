"""`climb`: the best setting of a sorted grid, validated outward from a start, for the settings a
closed-form model refits on validation after training (EASE's L2 weight, ItemKNN's shrinkage and
neighbourhood)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def climb(grid: Sequence[float], start: float, value: Callable[[float], float],
          ) -> tuple[float, dict[float, float]]:
    """``(best, values)``: a local best of ``value`` over the sorted ``grid`` and every value
    measured, ``{setting: value}``.

    From ``start`` (one of ``grid``), it measures the next setting down and keeps going down
    while the value rises; where the first step down does not rise, it goes up the same way.
    For a single-peaked curve (validation against a regularisation strength in practice) that is
    the grid's best after 2-5 measurements instead of one per setting. Each setting is measured
    once, ``start`` first; a non-finite value counts as the lowest; ties keep the setting closer
    to ``start``.
    """
    if start not in grid:
        raise ValueError(f"the start {start} is not in the grid {list(grid)}")
    values: dict[float, float] = {}

    def at(index: int) -> float:
        setting = grid[index]
        if setting not in values:
            found = float(value(setting))
            values[setting] = found if math.isfinite(found) else -math.inf
        return values[setting]

    first = best = list(grid).index(start)
    at(first)
    for step in (-1, 1):
        index = best + step
        while 0 <= index < len(grid) and at(index) > at(best):
            best, index = index, index + step
        if best != first:  # rose in this direction: single-peaked, so not the other
            break
    return grid[best], values
