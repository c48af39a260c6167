"""Search settings (K, N, B, λ, aggregation, budgets) checked once, with clear messages."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from qwq_local.search.aggregate import AGGREGATES
from qwq_local.search.answer import extract_final_answer
from qwq_local.search.protocol import SearchProgress, StepStop


def _at_least(name: str, value: int | float | None, low: int | float, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or isinstance(value, bool) or not value >= low:
        limit = f">= {low}" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {limit}, got {value!r}")


CHOOSE = ("best", "vote", "value")


@dataclass(frozen=True)
class SearchConfig:
    """How a strategy searches and when it stops. Budgets set to None are unlimited."""

    candidates: int = 6  # K: next steps sampled per expansion
    trajectories: int = 6  # N: stop after this many finished paths
    beam: int = 16  # B: most open nodes A* keeps; the worst are dropped
    lam: float = 1.0  # λ in f = g + λ·h
    agg: str = "min"  # how step rewards aggregate into g: min | max | sum | mean | last | prod
    max_expansions: int | None = 200  # sample calls
    max_generated_tokens: int | None = None  # tokens sampled by this search (lm.stats difference)
    max_depth: int | None = 200  # steps; nodes at this depth are not expanded
    time_limit: float | None = None  # seconds of `clock`
    stop: StepStop = StepStop()  # where a step ends
    n_samples: int = 8  # whole replies for best-of-n and self-consistency
    beam_width: int = 4  # nodes kept per level by beam search
    thinking: bool = True  # the policy thinks first (QwQ): only text after </think> can end a path early
    max_reply_tokens: int = 8192  # token limit of one whole reply (direct, best-of-n, self-consistency)
    finish_partial: bool = False  # A* out of budget with fewer than N paths finished: complete the best open ones
    completions: int = 1  # whole replies sampled from each node A* completes
    choose: str = "best"  # A*'s answer among finished paths: best (highest f) | vote | value (value-weighted vote)
    expand_width: int = 1  # open nodes A* expands together, the best m by f, in one batched call
    widen: int = 0  # most whole replies A* adds from the root after its N paths, while their vote is unsettled
    settle: float = 0.6  # the leading answer's share of the value-weighted vote at which A* stops widening
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    # A finished reply's final answer from (its text, the end-of-thinking tag): what it states, or for a program
    # format what its program prints when run in the sandbox (the front end supplies that reader).
    read_answer: Callable[[str, str], str | None] = field(default=extract_final_answer, repr=False, compare=False)
    progress: Callable[[SearchProgress], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _at_least("candidates (K)", self.candidates, 1)
        _at_least("trajectories (N)", self.trajectories, 1)
        _at_least("beam (B)", self.beam, 1)
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not math.isfinite(self.lam):
            raise ValueError(f"lam (λ) must be a finite number, got {self.lam!r}")
        _at_least("lam (λ)", self.lam, 0)
        if self.agg not in AGGREGATES:
            raise ValueError(f"agg must be one of {', '.join(AGGREGATES)}, got {self.agg!r}")
        _at_least("max_expansions", self.max_expansions, 1, optional=True)
        _at_least("max_generated_tokens", self.max_generated_tokens, 1, optional=True)
        _at_least("max_depth", self.max_depth, 1, optional=True)
        if self.time_limit is not None and not (self.time_limit > 0 and math.isfinite(self.time_limit)):
            raise ValueError(f"time_limit must be > 0 seconds or None, got {self.time_limit!r}")
        if not isinstance(self.stop, StepStop):
            raise ValueError(f"stop must be a StepStop, got {type(self.stop).__name__}")
        if self.stop.delimiter == "":
            raise ValueError("stop.delimiter must be a non-empty string or None")
        _at_least("stop.min_tokens", self.stop.min_tokens, 0)
        _at_least("stop.max_tokens", self.stop.max_tokens, 1)
        _at_least("n_samples", self.n_samples, 1)
        _at_least("beam_width", self.beam_width, 1)
        _at_least("max_reply_tokens", self.max_reply_tokens, 1)
        _at_least("completions", self.completions, 1)
        _at_least("expand_width", self.expand_width, 1)
        _at_least("widen", self.widen, 0)
        if isinstance(self.settle, bool) or not isinstance(self.settle, (int, float)) or not 0 < self.settle <= 1:
            raise ValueError(f"settle must be a share in (0, 1], got {self.settle!r}")
        if self.choose not in CHOOSE:
            raise ValueError(f"choose must be one of {', '.join(CHOOSE)}, got {self.choose!r}")
        if not callable(self.clock):
            raise ValueError("clock must be a callable returning seconds")
        if self.progress is not None and not callable(self.progress):
            raise ValueError("progress must be a callable taking a SearchProgress")

    def report(self, strategy: str, expansions: int, nodes: int, finished: int, best_f: float | None,
               generated_tokens: int) -> None:
        """Tell `progress`, if set, what the search has done so far."""
        if self.progress is not None:
            self.progress(SearchProgress(strategy, expansions, nodes, finished, best_f, generated_tokens))

    def reply_stop(self) -> StepStop:
        """The stop for sampling a whole reply in one step."""
        return StepStop(
            delimiter=None, min_tokens=0, max_tokens=self.max_reply_tokens, end_think=self.stop.end_think
        )
