"""The chat types every layer shares (engine, render, app, bench): a message and what one reply cost."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class Message:
    """One chat message; roles are "system", "user" and "assistant" (assistant content may hold its thinking)."""

    role: str
    content: str


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, its log-prob and the `top` likeliest tokens' (text, log-prob) at its place,
    from the model's own distribution (temperature 1, before any sampler: vLLM's raw log-probs)."""

    text: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class TurnStats:
    """What one reply cost: tokens seen, evaluated and generated, and time."""

    prompt_tokens: int = 0  # tokens of the whole rendered prompt this turn
    evaluated_prompt_tokens: int = 0  # tokens llama.cpp actually evaluated (KV cache reuse makes this small)
    thinking_tokens: int = 0
    answer_tokens: int = 0
    seconds: float = 0.0
    thinking_seconds: float = 0.0
    ctx_used: int = 0
    n_ctx: int = 0
    stop_reason: str = "eos"  # "eos" | "length" | "interrupted" | "context"
    prefill_seconds: float = 0.0

    @property
    def generated_tokens(self) -> int:
        return self.thinking_tokens + self.answer_tokens

    @classmethod
    def of(cls, stats: Any) -> TurnStats:
        """A copy of any stats object with these attributes (one it lacks keeps its default)."""
        return cls(**{f.name: getattr(stats, f.name) for f in fields(cls) if hasattr(stats, f.name)})
