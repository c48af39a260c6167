"""The chat-model contract the REPL programs against (the engine implements it; tests fake it).

Defined here, not imported from the engine, so that `render/` never imports llama.cpp code.
The engine's own `Message`/`TurnStats` need only the same attributes (structural typing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from qwq_local.config import Sampling

Intervene = Callable[[str, int], "str | None"]
"""Called with (thinking text so far, thinking tokens so far); a returned string is forced into the reply."""


@dataclass
class Message:
    """One chat message; roles are "system", "user" and "assistant"."""

    role: str
    content: str


@dataclass
class TurnStats:
    """What one reply cost; the engine fills it in `ChatModel.last_stats`."""

    prompt_tokens: int = 0  # tokens of the whole rendered prompt this turn
    evaluated_prompt_tokens: int = 0  # tokens llama.cpp actually evaluated (KV cache reuse makes this small)
    thinking_tokens: int = 0
    answer_tokens: int = 0
    seconds: float = 0.0
    thinking_seconds: float = 0.0
    ctx_used: int = 0
    n_ctx: int = 0
    stop_reason: str = "eos"  # "eos" | "length" | "interrupted"


class ChatModel(Protocol):
    """A chat model that streams a reply's text pieces and can be steered while it thinks."""

    name: str
    n_ctx: int
    thinks: bool  # the chat template opens the reply inside "<think>\n"
    last_stats: TurnStats | None

    def stream(
        self,
        messages: list[Message],
        sampling: Sampling,
        *,
        intervene: Intervene | None = None,
    ) -> Iterator[str]:
        """Yield the reply's text pieces; closing the generator stops generation."""
        ...

    def reset(self) -> None:
        """Forget the KV cache."""
        ...


StrategyRunner = Callable[[str, str], "tuple[str, TurnStats, str]"]
"""strategy_runner(question, strategy) -> (reply text, stats, tree summary) for non-direct strategies."""
