"""The budgets one search spends: expansions, generated tokens and time, counted from its start."""

from __future__ import annotations

from qwq_local.search.config import SearchConfig
from qwq_local.search.protocol import StepLM


class Budget:
    """Counts what a search has spent; `exhausted()` names the first budget that ran out."""

    def __init__(self, config: SearchConfig, lm: StepLM) -> None:
        self.config = config
        self.lm = lm
        self.started = config.clock()
        self.tokens_at_start = lm.stats.generated_tokens
        self.expansions = 0

    @property
    def generated_tokens(self) -> int:
        return self.lm.stats.generated_tokens - self.tokens_at_start

    def exhausted(self, *, expansions: bool = True) -> str | None:
        """"expansions", "tokens" or "time" when that budget allows no further sample call, else None.
        `expansions=False`: for work that expands nothing (whole replies), only tokens and time count.

        Checked before each call, so one batched call can overshoot the token budget by its own tokens.
        """
        config = self.config
        if expansions and config.max_expansions is not None and self.expansions >= config.max_expansions:
            return "expansions"
        if config.max_generated_tokens is not None and self.generated_tokens >= config.max_generated_tokens:
            return "tokens"
        if config.time_limit is not None and config.clock() - self.started >= config.time_limit:
            return "time"
        return None
