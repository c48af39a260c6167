"""Scorers combined by weighted mean, and the scorer a CLI value such as `rules,self-eval` names."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from qwq_local.search.protocol import Candidate, Scorer, StepLM
from qwq_local.value.rules import RulesScorer
from qwq_local.value.selfeval import SelfEvalScorer

SCORER_NAMES = ("rules", "self-eval", "qhead")


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


def parse_scorers(names: Sequence[str]) -> list[tuple[str, float]]:
    """`["rules,self-eval:2"]` -> [("rules", 1.0), ("self-eval", 2.0)]; a name may carry `:weight`."""
    parsed: list[tuple[str, float]] = []
    for entry in names:
        for item in entry.split(","):
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
    return parsed


def build_scorer(names: Sequence[str], lm: StepLM | None, qhead: Scorer | None = None) -> Scorer:
    """The scorer for CLI values like `rules`, `self-eval`, `qhead` or `rules,self-eval` (`name:weight` too).

    One name gives that scorer; several give their WeightedScorer (equal weights unless given).
    `qhead` is a scorer built elsewhere (the Q-value head) and passed in.
    """
    parts: list[tuple[Scorer, float]] = []
    for name, weight in parse_scorers(names):
        scorer: Scorer
        if name == "rules":
            scorer = RulesScorer()
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
