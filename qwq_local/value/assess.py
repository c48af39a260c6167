"""How a head's values match stored rollout labels: metrics by kind of state, and how it would choose among replies.

Best-of-N and A* use a head in two ways: to rank states inside a reply (steps) and to pick one of several finished
replies (terminal states). `assess` reports both, on labels the head was not trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwq_local.value.training import Metrics, evaluate


@dataclass
class Choice:
    """Problems whose stored replies are mixed (some right, some wrong): how often the top-valued one is right."""

    problems: int  # problems with at least one right and one wrong terminal state
    head_right: int  # of those, where the head's highest-valued terminal state is a right reply
    chance: float  # what picking a reply at random gets right, summed over those problems


@dataclass
class Assessment:
    subsets: dict[str, tuple[int, Metrics]]  # "all" / "steps" / "terminal" -> (problems, metrics); empty ones left out
    choice: Choice


def assess(p: np.ndarray, y: np.ndarray, terminal: np.ndarray, groups: np.ndarray) -> Assessment:
    """`p`: head values, `y`: labels in [0, 1], `terminal`: bool per state, `groups`: the problem of each state."""
    p, y = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    terminal, groups = np.asarray(terminal, dtype=bool), np.asarray(groups)
    subsets = {}
    for name, mask in (("all", np.ones_like(terminal)), ("steps", ~terminal), ("terminal", terminal)):
        if mask.any():
            subsets[name] = (int(np.unique(groups[mask]).size), evaluate(y[mask], p[mask]))
    problems, right, chance = 0, 0, 0.0
    for group in np.unique(groups[terminal]):
        rows = np.flatnonzero(terminal & (groups == group))
        won = y[rows] >= 0.5
        if won.all() or not won.any():
            continue
        problems += 1
        right += int(won[np.argmax(p[rows])])
        chance += float(won.mean())
    return Assessment(subsets, Choice(problems, right, chance))
