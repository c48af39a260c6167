"""How a path's step rewards become one value g: pure functions over the list of rewards."""

from __future__ import annotations

import math
from typing import Callable, Sequence

Agg = Callable[[Sequence[float]], float]

EMPTY = 0.0  # the value of a path with no steps yet (the root), for every aggregation


def agg_min(rewards: Sequence[float]) -> float:
    """The weakest step: a path is as good as its worst step (Q*'s default)."""
    return min(rewards) if rewards else EMPTY


def agg_max(rewards: Sequence[float]) -> float:
    """The strongest step."""
    return max(rewards) if rewards else EMPTY


def agg_sum(rewards: Sequence[float]) -> float:
    """The total reward; grows with depth, so it favours longer paths."""
    return math.fsum(rewards) if rewards else EMPTY


def agg_mean(rewards: Sequence[float]) -> float:
    """The average step reward."""
    return math.fsum(rewards) / len(rewards) if rewards else EMPTY


def agg_last(rewards: Sequence[float]) -> float:
    """The last step's reward only."""
    return rewards[-1] if rewards else EMPTY


def agg_prod(rewards: Sequence[float]) -> float:
    """The product: the chance that every step is right, if rewards were independent probabilities."""
    return math.prod(rewards) if rewards else EMPTY


AGGREGATES: dict[str, Agg] = {
    "min": agg_min,
    "max": agg_max,
    "sum": agg_sum,
    "mean": agg_mean,
    "last": agg_last,
    "prod": agg_prod,
}


def get_agg(name: str) -> Agg:
    """The aggregation called `name`; a ValueError lists the known ones."""
    try:
        return AGGREGATES[name]
    except KeyError:
        raise ValueError(f"unknown aggregation {name!r}; choose from {', '.join(AGGREGATES)}") from None
