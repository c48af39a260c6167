"""Reasoning steps: split a finished reply the way the engine cuts steps, and tell when a path ends."""

from __future__ import annotations

from qwq_local.dialog.think import CLOSE as END_THINK
from qwq_local.dialog.think import split_at_close as split_thinking
from qwq_local.search.answer import find_explicit_answer
from qwq_local.search.protocol import Candidate


def _pieces(text: str, delimiter: str) -> list[str]:
    """`text` cut after each `delimiter`, the delimiter kept at the end of its piece."""
    pieces: list[str] = []
    start = 0
    while True:
        at = text.find(delimiter, start)
        if at < 0:
            break
        pieces.append(text[start : at + len(delimiter)])
        start = at + len(delimiter)
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _cut_long(piece: str, max_chars: int) -> list[str]:
    """`piece` in parts of at most `max_chars`, cut after the last newline or space when there is one."""
    parts: list[str] = []
    while len(piece) > max_chars:
        window = piece[:max_chars]
        cut = max(window.rfind("\n"), window.rfind(" ")) + 1
        if cut <= 0:
            cut = max_chars
        parts.append(piece[:cut])
        piece = piece[cut:]
    if piece:
        parts.append(piece)
    return parts


def _split_thinking_text(text: str, delimiter: str, min_chars: int, max_chars: int | None) -> list[str]:
    steps: list[str] = []
    carry = ""
    for piece in _pieces(text, delimiter):
        if not piece.strip() and steps and not carry:
            steps[-1] += piece  # a run of blank lines belongs to the step before it
            continue
        carry += piece
        if len(carry.strip()) >= min_chars:
            steps.append(carry)
            carry = ""
    if carry:
        if steps:
            steps[-1] += carry
        else:
            steps.append(carry)
    if max_chars is None:
        return steps
    return [part for step in steps for part in _cut_long(step, max_chars)]


def split_steps(
    text: str,
    delimiter: str = "\n\n",
    *,
    min_chars: int = 1,
    max_chars: int | None = None,
    end_think: str | None = END_THINK,
) -> list[str]:
    """A finished reply as steps, joining back to `text` exactly (`"".join(steps) == text`).

    Steps end after `delimiter`; a step shorter than `min_chars` (stripped) joins the next one;
    a step longer than `max_chars` is cut at its last newline or space within the limit. As in
    the engine, the step that reaches `end_think` ends right after it and the answer after it is
    one final step.
    """
    if not delimiter:
        raise ValueError("delimiter must be a non-empty string")
    if min_chars < 0:
        raise ValueError(f"min_chars must be >= 0, got {min_chars}")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be >= 1 or None, got {max_chars}")
    at = text.find(end_think) if end_think else -1
    if at < 0:
        return _split_thinking_text(text, delimiter, min_chars, max_chars)
    head_end = at + len(end_think or "")
    steps = _split_thinking_text(text[:head_end], delimiter, min_chars, max_chars)
    answer = text[head_end:]
    return steps + [answer] if answer else steps


def is_terminal(
    candidate: Candidate, text_so_far: str, *, thinking: bool = True, end_think: str = END_THINK
) -> bool:
    """Whether the path ends with `candidate`: the reply finished, or its answer part states an answer.

    The answer part is the text after `end_think`. When there is none yet, a thinking policy
    (`thinking=True`, QwQ) has no answer part, so a \\boxed{} inside its thinking does not end
    the path; a policy that answers directly has all of its text as answer part.
    """
    if candidate.finished:
        return True
    text = text_so_far + candidate.text
    if end_think and end_think in text:
        answer = split_thinking(text, end_think)[1]
    elif thinking:
        return False
    else:
        answer = text
    return find_explicit_answer(answer) is not None
