"""Every search strategy by name, all with the signature fn(question, config, lm, scorer)."""

from __future__ import annotations

from typing import Callable

from qwq_local.search.astar import astar
from qwq_local.search.beam import beam_search
from qwq_local.search.bon import best_of_n
from qwq_local.search.config import SearchConfig
from qwq_local.search.direct import direct
from qwq_local.search.protocol import Scorer, SearchResult, StepLM
from qwq_local.search.sc import self_consistency

Strategy = Callable[[str, SearchConfig, StepLM, "Scorer | None"], SearchResult]

STRATEGIES: dict[str, Strategy] = {
    "astar": astar,
    "beam": beam_search,
    "bon": best_of_n,
    "sc": self_consistency,
    "direct": direct,
}

_SCORER_FREE = frozenset({"direct", "sc"})


def needs_scorer(name: str) -> bool:
    """Whether strategy `name` ranks with a scorer (direct and self-consistency do not)."""
    _check(name)
    return name not in _SCORER_FREE


def _check(name: str) -> None:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def run(name: str, question: str, config: SearchConfig, lm: StepLM, scorer: Scorer | None = None) -> SearchResult:
    """Run strategy `name`; a ValueError lists the known names."""
    _check(name)
    return STRATEGIES[name](question, config, lm, scorer)
