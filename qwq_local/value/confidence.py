"""A value from the step's own token log-probs, at no extra cost: DeepConf's confidence (arXiv 2508.15260).

A token's confidence is -mean log-prob of the k likeliest tokens where it was sampled; a step's is the mean over
its last window of tokens (`tail`), its lowest window (`low`) or all its tokens (`mean`). The engine records these
while sampling (the KV tree from the full logits, a remote engine from `top_logprobs`), so no pass is added. The
value is a logistic squash of the confidence, so that its odds, v / (1 - v) = exp((c - center) / scale), are the
weights of a value-weighted vote with the bank's spread as the scale (`qwq bench choose` wvote).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from qwq_local.search.protocol import Candidate

VARIANTS = ("tail", "low", "mean")
WINDOW = 32


def lowest_window(values: np.ndarray, window: int) -> float | None:
    """The lowest mean over any `window` consecutive values (the whole run when it is shorter); NaNs dropped."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None
    if len(values) <= window:
        return float(values.mean())
    sums = np.convolve(values, np.ones(window), mode="valid")
    return float(sums.min() / window)


@dataclass
class ConfidenceScorer:
    """Scores a step by its tokens' DeepConf confidence (higher is surer); 0.5 when the engine gave none."""

    variant: str = "tail"
    # The mean and spread of the replies' tail confidence on the bank (qwen2.5-coder-0.5b, GSM8K dev): odds of
    # exp((c - 12.9) / 1.4) make A*'s value vote the bank's wvote:tail_conf. The centre cancels out of a vote.
    center: float = 12.9
    scale: float = 1.4
    window: int = WINDOW
    name: str = field(default="confidence", init=False)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"confidence variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if not (self.scale > 0 and math.isfinite(self.scale) and math.isfinite(self.center)):
            raise ValueError("confidence center must be finite and scale > 0")

    def confidence(self, candidate: Candidate) -> float | None:
        values = np.asarray(candidate.token_confidences, dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            return None
        if self.variant == "mean":
            return float(values.mean())
        if self.variant == "tail":
            return float(values[-self.window:].mean())
        return lowest_window(values, self.window)

    def score(self, question: str, steps: Sequence[str], candidate: Candidate) -> float:
        c = self.confidence(candidate)
        if c is None:
            return 0.5
        z = max(-50.0, min(50.0, (c - self.center) / self.scale))
        return 1.0 / (1.0 + math.exp(-z))
