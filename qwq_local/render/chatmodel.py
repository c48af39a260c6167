"""The chat-model contract the REPL programs against (the engine implements it; tests fake it).

Defined here, not imported from the engine, so that `render/` never imports llama.cpp code; the message
and stats types are the shared ones of `qwq_local.dialog.messages`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from qwq_local.config import Sampling

Intervene = Callable[[str, int], "str | None"]
"""Called with (thinking text so far, thinking tokens so far); a returned string is forced into the reply.

After forcing a string the model calls it once more, with the text and count including that string
(so a fold line drawn when the forced `</think>` arrives shows the whole section); that return is ignored.
"""


class Stats(Protocol):
    """What the REPL reads of a reply's stats; the engine's own TurnStats satisfies it."""

    @property
    def prompt_tokens(self) -> int: ...
    @property
    def evaluated_prompt_tokens(self) -> int: ...
    @property
    def thinking_tokens(self) -> int: ...
    @property
    def answer_tokens(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def thinking_seconds(self) -> float: ...
    @property
    def ctx_used(self) -> int: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def stop_reason(self) -> str: ...


class ChatModel(Protocol):
    """A chat model that streams a reply's text pieces and can be steered while it thinks.

    Read-only members and `list[Any]` messages keep the engine's own `Message`/`TurnStats`
    classes conformant without `render/` importing the engine: messages passed are
    `render.chatmodel.Message` objects (anything with `.role` and `.content` works).
    """

    @property
    def name(self) -> str: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def thinks(self) -> bool: ...  # the chat template opens the reply inside "<think>\n"
    @property
    def last_stats(self) -> Stats | None: ...

    def stream(
        self,
        messages: list[Any],
        sampling: Sampling,
        *,
        intervene: Intervene | None = None,
    ) -> Iterator[str]:
        """Yield the reply's text pieces; closing the generator stops generation."""
        ...

    def reset(self) -> None:
        """Forget the KV cache."""
        ...


StrategyRunner = Callable[[str, str, list], "tuple[str, Stats, str]"]
"""strategy_runner(question, strategy, earlier messages) -> (reply text, stats, tree summary), non-direct."""
