"""Scorers combined by weighted mean, and the scorers a value such as `rules+self-eval:2` names.

One syntax everywhere (`qwq solve --scorer`, `qwq bench accuracy -s astar:...`): names joined by `+`, each
with an optional `:weight`; `,` is still read as `+`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from qwq_local.search.protocol import Candidate, Scorer, StepLM
from qwq_local.value.rules import RulesScorer
from qwq_local.value.selfeval import SelfEvalScorer

SCORER_NAMES = ("rules", "self-eval", "qhead", "confidence", "confidence-low", "confidence-mean")

ScorerChoice = tuple[str, float]
"""One scorer named for a search and its weight: ("self-eval", 2.0)."""


@dataclass
class WeightedScorer:
    """The weighted mean of several scorers' values; its name joins theirs with "+"."""

    parts: Sequence[tuple[Scorer, float]]
    name: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("WeightedScorer needs at least one (scorer, weight) pair")
        for scorer, weight in self.parts:
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"weight of scorer {scorer.name!r} must be a finite number >= 0, got {weight!r}")
        if sum(weight for _, weight in self.parts) <= 0:
            raise ValueError("the weights of a WeightedScorer must not all be 0")
        self.name = "+".join(scorer.name for scorer, _ in self.parts)

    def score(self, question: str, steps: Sequence[str], candidate: Candidate) -> float:
        total = weighted = 0.0
        for scorer, weight in self.parts:
            if weight == 0:
                continue
            value = float(scorer.score(question, steps, candidate))
            weighted += weight * (0.0 if math.isnan(value) else min(1.0, max(0.0, value)))
            total += weight
        return weighted / total


def parse_scorers(names: str | Sequence[str]) -> tuple[ScorerChoice, ...]:
    """`"rules+self-eval:2"` -> (("rules", 1.0), ("self-eval", 2.0)); a name may carry `:weight`."""
    parsed: list[ScorerChoice] = []
    for entry in [names] if isinstance(names, str) else names:
        for item in entry.replace(",", "+").split("+"):
            item = item.strip()
            if not item:
                continue
            name, _, weight_text = item.partition(":")
            name = name.strip().lower()
            if name not in SCORER_NAMES:
                raise ValueError(f"unknown scorer {name!r}; choose from {', '.join(SCORER_NAMES)}")
            try:
                weight = float(weight_text) if weight_text.strip() else 1.0
            except ValueError:
                raise ValueError(f"scorer weight in {item!r} must be a number") from None
            if any(name == seen for seen, _ in parsed):
                raise ValueError(f"scorer {name!r} is named twice")
            parsed.append((name, weight))
    if not parsed:
        raise ValueError(f"no scorer named; choose from {', '.join(SCORER_NAMES)}")
    return tuple(parsed)


def scorer_label(choices: Sequence[ScorerChoice]) -> str:
    """The one spelling of parsed scorers, as reports show it: `rules+self-eval:2`."""
    return "+".join(name if weight == 1 else f"{name}:{weight:g}" for name, weight in choices)


def build_scorer(names: str | Sequence[str], lm: StepLM | None, qhead: Scorer | None = None) -> Scorer:
    """The scorer for values like `rules`, `self-eval`, `qhead` or `rules+self-eval` (`name:weight` too)."""
    return scorer_of(parse_scorers(names), lm, qhead)


def scorer_of(choices: Sequence[ScorerChoice], lm: StepLM | None, qhead: Scorer | None = None) -> Scorer:
    """The scorer for parsed choices: one gives that scorer, several their WeightedScorer.

    `qhead` is a scorer built elsewhere (the Q-value head) and passed in.
    """
    parts: list[tuple[Scorer, float]] = []
    for name, weight in choices:
        scorer: Scorer
        if name == "rules":
            scorer = RulesScorer()
        elif name.startswith("confidence"):
            from qwq_local.value.confidence import ConfidenceScorer

            scorer = ConfidenceScorer(name.partition("-")[2] or "tail")
        elif name == "self-eval":
            if lm is None:
                raise ValueError("scorer 'self-eval' needs the policy model, but none was given")
            scorer = SelfEvalScorer(lm)
        else:
            if qhead is None:
                raise ValueError(
                    "scorer 'qhead' needs a trained Q-value head, but none is loaded; "
                    "pick 'rules' or 'self-eval', or load a head"
                )
            scorer = qhead
        parts.append((scorer, weight))
    if len(parts) == 1:
        return parts[0][0]
    return WeightedScorer(parts)
