"""A scripted fake ChatModel: a queue of replies, the messages it was sent, `intervene` honoured.

Run as a program (`PYTHONPATH=. python -m tests.fake_chat`) it is `qwq chat` on the fake model,
for driving the REPL in a real terminal (pexpect) without llama.cpp.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from qwq_local.config import Sampling
from qwq_local.dialog.messages import Message, TokenLogprob, TurnStats
from qwq_local.render.chatmodel import Intervene

DEFAULT_REPLY = "<think>\nLet me think about it.\n</think>\n\nThe answer is 42."
_PIECES = re.compile(r"<think>\n?|</think>|\s+|\w+|[^\w\s]")  # the tags are single tokens, as in QwQ


@dataclass
class Reply:
    """One scripted reply; `interrupt_after` pieces raises KeyboardInterrupt inside the stream."""

    text: str
    interrupt_after: int | None = None
    piece_seconds: float = 0.0


def pieces_of(text: str) -> list[str]:
    return _PIECES.findall(text)


@dataclass
class FakeChat:
    """Implements render.chatmodel.ChatModel from a script."""

    replies: list[Reply | str] = field(default_factory=list)
    name: str = "fake-chat"
    n_ctx: int = 4096
    thinks: bool = True
    default: str = DEFAULT_REPLY
    last_stats: TurnStats | None = None
    calls: list[list[Message]] = field(default_factory=list)  # messages of every stream() call
    samplings: list[Sampling] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)  # what intervene() made the model write
    resets: int = 0
    thinks_asked: list[bool | None] = field(default_factory=list)  # the `think` of every stream() call
    closed: int = 0  # streams closed early by the caller
    token_log: list[TokenLogprob] = field(default_factory=list)
    _log_top: int | None = None  # the alternatives the reply being generated logs (None: no log)
    _asked_top: int | None = None  # what continue_text asked of the stream it starts

    def stream(self, messages: list[Message], sampling: Sampling, *, intervene: Intervene | None = None,
               think: bool | None = None) -> Iterator[str]:
        self.calls.append([Message(m.role, m.content) for m in messages])
        self.samplings.append(sampling)
        self._log_top, self._asked_top, self.token_log = self._asked_top, None, []  # at the call, as the engine
        self.thinks_asked.append(think)
        item = self.replies.pop(0) if self.replies else self.default
        reply = item if isinstance(item, Reply) else Reply(item)
        return self._generate(messages, reply, intervene)

    def continue_text(self, text: str, sampling: Sampling, logprobs: int | None = None) -> Iterator[str]:
        """A raw completion: the next scripted reply continues `text` (no template, no thinking); `logprobs`: each
        piece is one token of log-prob -0.5 in `token_log` (its alternatives: itself, then " alt" at -1.5)."""
        self._asked_top = logprobs
        return self.stream([Message("raw", text)], sampling, think=False)

    def _generate(self, messages: list[Message], reply: Reply, intervene: Intervene | None) -> Iterator[str]:
        start = time.monotonic()
        prompt_tokens = sum(len(pieces_of(m.content)) + 4 for m in messages)
        thinking, thinking_tokens, answer_tokens, thinking_seconds = "", 0, 0, 0.0
        in_thinking = opened = False
        stop = "eos"
        pieces = pieces_of(reply.text)
        i = 0
        try:
            while i < len(pieces):
                if reply.interrupt_after is not None and i >= reply.interrupt_after:
                    raise KeyboardInterrupt
                piece = pieces[i]
                i += 1
                if reply.piece_seconds:
                    time.sleep(reply.piece_seconds)
                if self._log_top is not None:
                    self.token_log.append(TokenLogprob(piece, -0.5, ((piece, -0.5), (" alt", -1.5))[:self._log_top]))
                yield piece
                if not in_thinking and not opened and piece.startswith("<think>"):
                    in_thinking = opened = True
                    continue
                if in_thinking:
                    if piece == "</think>":
                        in_thinking, thinking_seconds = False, time.monotonic() - start
                        continue
                    thinking += piece
                    thinking_tokens += 1
                    forced = intervene(thinking, thinking_tokens) if intervene else None
                    if forced is not None:
                        self.forced.append(forced)
                        thinking += forced
                        thinking_tokens += len(pieces_of(forced))
                        intervene(thinking, thinking_tokens)  # the count with the forced words, as the engine does
                        yield forced
                        in_thinking, thinking_seconds = False, time.monotonic() - start
                        after = reply.text.split("</think>", 1)
                        pieces = pieces[:i] + pieces_of(after[1] if len(after) == 2 else "")
                else:
                    answer_tokens += 1
        except (GeneratorExit, KeyboardInterrupt):
            stop = "interrupted"
            self.closed += 1
            raise
        finally:
            total = prompt_tokens + thinking_tokens + answer_tokens
            self.last_stats = TurnStats(
                prompt_tokens=prompt_tokens,
                evaluated_prompt_tokens=max(prompt_tokens - 8 * (len(self.calls) - 1), 1),
                thinking_tokens=thinking_tokens,
                answer_tokens=answer_tokens,
                seconds=max(time.monotonic() - start, 1e-3),
                thinking_seconds=thinking_seconds,
                ctx_used=total,
                n_ctx=self.n_ctx,
                stop_reason=stop,
            )

    def reset(self) -> None:
        self.resets += 1


def slow_thinker() -> FakeChat:
    """A model whose replies think for a while, for terminal tests (Ctrl-C, folding)."""
    thinking = "\n".join(f"Step {i}: consider case {i} carefully and check it." for i in range(1, 41))
    return FakeChat(
        default=f"<think>\n{thinking}\n</think>\n\nThe answer is 42.",
        replies=[Reply(f"<think>\n{thinking}\n</think>\n\nThe answer is 42.", piece_seconds=0.002)],
    )


def main() -> int:
    import os

    import sys

    from qwq_local.config import load_settings
    from qwq_local.render.console import Env
    from qwq_local.render.history import default_path, open_history
    from qwq_local.render.repl import run_chat

    model = slow_thinker()
    if os.environ.get("FAKE_CHAT_SLOW"):
        model.replies = [Reply(model.default, piece_seconds=float(os.environ["FAKE_CHAT_SLOW"]))] * 3
    env = Env.from_process()
    history, warning = open_history(default_path())  # as `qwq chat` opens it
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        return run_chat(
            model,
            load_settings(),
            env,
            history,
            show_thinking=bool(os.environ.get("FAKE_CHAT_SHOW")),
            hide_thinking=bool(os.environ.get("FAKE_CHAT_HIDE")),
            think_budget=int(os.environ["FAKE_CHAT_BUDGET"]) if os.environ.get("FAKE_CHAT_BUDGET") else None,
            each_line=bool(os.environ.get("FAKE_CHAT_EACH_LINE")),
        )
    finally:
        if history is not None:
            history.close()


if __name__ == "__main__":
    raise SystemExit(main())
