"""The one place that knows QwQ's <think> tags: a pure streaming parser, and split, strip and wrap of whole replies.

Rules (the same for any split of the reply into pieces):

* `starts_in_thinking=False`: text before the first `<think>` is answer text; `<think>` opens the
  thinking; the first `</think>` after it closes the thinking; everything after is answer.
  A reply without `<think>` is all answer.
* `starts_in_thinking=True` (QwQ's template opens the reply inside `<think>\\n` without the model
  writing it): text before the first `</think>` is thinking. An opening `<think>` that comes before
  any non-whitespace text is consumed, so a stream that does repeat the tag parses the same way.
* Only those two tags are removed. Once the thinking has closed, a stray `</think>` (or `<think>`)
  in the answer is kept as literal text; a nested `<think>` inside the thinking is thinking text.
* A tag split across pieces is recognised: a tail that could be the start of a tag is held back
  until the next piece (or `close()`) decides it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

OPEN = "<think>"
CLOSE = "</think>"
OPEN_LINE = OPEN + "\n"  # how a chat template opens a thinking reply

Kind = Literal["thinking", "answer"]


@dataclass(frozen=True)
class Segment:
    """A run of reply text that is either thinking or answer."""

    kind: Kind
    text: str


def _held_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkParser:
    """Feed reply pieces in, get thinking/answer segments out; `close()` flushes the held tail."""

    def __init__(self, *, starts_in_thinking: bool = False) -> None:
        # "lead": thinking, an opening tag may still come; "before": answer until <think>;
        # "thinking": until </think>; "answer": to the end, tags are text.
        self.state = "lead" if starts_in_thinking else "before"
        self._pending = ""
        self.saw_thinking = starts_in_thinking
        self.thinking_closed = False

    @property
    def in_thinking(self) -> bool:
        return self.state in ("lead", "thinking")

    def feed(self, piece: str) -> list[Segment]:
        """Parse one more piece; return the segments it completes (adjacent kinds merged)."""
        self._pending += piece
        out: list[Segment] = []
        while self._pending:
            if not self._step(out):
                break
        return _merge(out)

    def close(self) -> list[Segment]:
        """End of the reply: whatever is held back is text of the current kind."""
        text, self._pending = self._pending, ""
        if not text:
            return []
        return [Segment("thinking" if self.in_thinking else "answer", text)]

    def _step(self, out: list[Segment]) -> bool:
        """Consume what can be decided from the pending text; False when more input is needed."""
        text = self._pending
        if self.state == "answer":
            out.append(Segment("answer", text))
            self._pending = ""
            return False
        if self.state == "lead":
            body = text.lstrip()
            lead = text[: len(text) - len(body)]
            if body.startswith(OPEN):
                if lead:
                    out.append(Segment("thinking", lead))
                self._pending = body[len(OPEN) :]
                self.state = "thinking"
                return True
            if OPEN.startswith(body):  # only whitespace, or a possible start of "<think>"
                return False
            self.state = "thinking"
            return True
        before = self.state == "before"
        tag = OPEN if before else CLOSE
        kind: Kind = "answer" if before else "thinking"
        at = text.find(tag)
        if at >= 0:
            if at:
                out.append(Segment(kind, text[:at]))
            self._pending = text[at + len(tag) :]
            if self.state == "before":
                self.state, self.saw_thinking = "thinking", True
            else:
                self.state, self.thinking_closed = "answer", True
            return True
        keep = _held_prefix(text, tag)
        if len(text) > keep:
            out.append(Segment(kind, text[: len(text) - keep]))
        self._pending = text[len(text) - keep :]
        return False


def _merge(segments: Iterable[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for seg in segments:
        if not seg.text:
            continue
        if merged and merged[-1].kind == seg.kind:
            merged[-1] = Segment(seg.kind, merged[-1].text + seg.text)
        else:
            merged.append(seg)
    return merged


def parse_reply(pieces: Iterable[str], *, starts_in_thinking: bool = False) -> list[Segment]:
    """Parse a whole reply (given as pieces) into merged segments."""
    parser = ThinkParser(starts_in_thinking=starts_in_thinking)
    out: list[Segment] = []
    for piece in pieces:
        out.extend(parser.feed(piece))
    out.extend(parser.close())
    return _merge(out)


def split_thinking(text: str, *, starts_in_thinking: bool = False) -> tuple[str, str]:
    """(thinking, answer) of a whole reply, tags removed, whitespace as written."""
    segments = parse_reply([text], starts_in_thinking=starts_in_thinking)
    thinking = "".join(s.text for s in segments if s.kind == "thinking")
    answer = "".join(s.text for s in segments if s.kind == "answer")
    return thinking, answer


def strip_thinking(text: str, *, starts_in_thinking: bool = False) -> str:
    """The final answer only (what earlier turns contribute to the history the model sees)."""
    return split_thinking(text, starts_in_thinking=starts_in_thinking)[1].strip()


def split_at_close(text: str, close: str = CLOSE) -> tuple[str, str]:
    """(thinking, answer) split at the first `close`; without one, all of `text` is answer (a leading <think> goes)."""
    at = text.find(close) if close else -1
    if at < 0:
        return "", text
    thinking = text[:at]
    stripped = thinking.lstrip()
    if stripped.startswith(OPEN):
        thinking = stripped[len(OPEN) :]
    return thinking, text[at + len(close) :]


def strip_closed_thinking(text: str) -> str:
    """What a reply leaves in the history the model sees: everything up to the first </think> (and the blank
    after it) removed; a reply without one is kept whole."""
    return split_at_close(text)[1].lstrip() if CLOSE in text else text


def wrap_thinking(thinking: str, answer: str) -> str:
    """A reply written back from its parts: the thinking in its tags, then the answer."""
    return f"{OPEN_LINE}{thinking}\n{CLOSE}\n\n{answer}" if thinking else answer


@dataclass
class ThinkTally:
    """A streamed reply's thinking and answer tokens, and when its thinking closed (both chat engines keep one)."""

    in_think: bool
    started: float
    n_think: int = 0
    n_answer: int = 0
    think_end: float | None = None
    pieces: list[str] = field(default_factory=list)  # the thinking so far

    @property
    def thinking(self) -> str:
        return "".join(self.pieces)

    def token(self, piece: str) -> None:
        """One sampled token's text: thinking until `</think>` has been written, answer after."""
        if self.in_think:
            self.n_think += 1
            self.pieces.append(piece)
            self._close_if(CLOSE in "".join(self.pieces[-8:]))
        else:
            self.n_answer += 1

    def forced(self, text: str, n_tokens: int) -> None:
        """Words put into the thinking from outside (a budget closing it), counted as thinking tokens."""
        self.n_think += n_tokens
        self.pieces.append(text)
        self._close_if(CLOSE in text)

    def thinking_seconds(self, now: float, thinks: bool) -> float:
        """Seconds from the start to the thinking's end (to `now` while still thinking); 0 with no thinking."""
        if not (thinks or self.n_think):
            return 0.0
        end = now if self.in_think or self.think_end is None else self.think_end
        return end - self.started

    def _close_if(self, closed: bool) -> None:
        if closed:
            self.in_think = False
            self.think_end = time.perf_counter()
