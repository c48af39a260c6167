"""A scorer that asks the policy itself whether a step is right: P(Yes) of a yes/no question."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from qwq_local.search.protocol import Candidate, StepLM

PROMPT = """You are checking one step of a step-by-step solution.

Question:
{question}

Steps so far:
{steps}

Next step:
{candidate}

Is the next step correct and useful for solving the question? Answer Yes or No."""

OMITTED = "(earlier steps omitted)"


@dataclass
class SelfEvalScorer:
    """Process reward from the policy's own judgement (`lm.yes_probability`), as in self-evaluation decoding."""

    lm: StepLM
    max_context_chars: int = 6000  # the steps so far are cut from the front to about this many characters
    name: str = field(default="self-eval", init=False)

    def prompt(self, question: str, steps: Sequence[str], candidate: Candidate) -> str:
        """The yes/no question: the problem, the latest steps that fit, and the candidate step."""
        shown: list[str] = []
        used = 0
        for number in range(len(steps), 0, -1):
            line = f"Step {number}: {steps[number - 1].strip()}"
            if shown and used + len(line) > self.max_context_chars:
                shown.append(OMITTED)
                break
            shown.append(line)
            used += len(line)
        return PROMPT.format(
            question=question.strip(),
            steps="\n".join(reversed(shown)) if shown else "(none yet)",
            candidate=candidate.text.strip(),
        )

    def score(self, question: str, steps: Sequence[str], candidate: Candidate) -> float:
        p = float(self.lm.yes_probability(self.prompt(question, steps, candidate)))
        return 0.0 if math.isnan(p) else min(1.0, max(0.0, p))
