"""Thinking budget and loop guard: an `intervene` callback that closes the thinking when it must.

`Intervention` is deterministic: its answer depends only on the (thinking, tokens) calls it has
seen, so it is tested without a model. It fires at most once per reply and records why.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

BUDGET_TEXT = "\n\nTime is up, so I have to stop thinking now and give the final answer.\n</think>\n\n"
LOOP_TEXT = "\n\nI am going in circles, so I have to stop thinking now and give the final answer.\n</think>\n\n"

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class LoopRule:
    """When the tail of the thinking counts as a loop."""

    ngram: int = 10  # words per n-gram
    ngram_repeats: int = 6  # one n-gram this many times in the tail is a loop
    tail_words: int = 600
    paragraph_repeats: int = 3  # the same paragraph this many times is a loop
    min_paragraph_chars: int = 24  # shorter paragraphs ("Wait.", "Hmm.") may repeat freely
    check_every: int = 16  # tokens between n-gram checks (paragraphs are checked as they complete)


class Intervention:
    """Policy for `ChatModel.stream(intervene=...)`: end thinking at the budget or in a loop."""

    def __init__(self, budget: int | None = None, loops: LoopRule | None = LoopRule()) -> None:
        if budget is not None and budget < 1:
            raise ValueError("a thinking budget must be at least 1 token")
        self.budget = budget
        self.loops = loops
        self.reason: str | None = None  # "budget" | "loop" once it fired
        self.detail = ""
        self.at_tokens: int | None = None
        self.last_tokens = 0  # thinking tokens at the latest call
        self._paragraphs: Counter[str] = Counter()
        self._scanned = 0  # thinking text up to here is split into counted paragraphs
        self._next_ngram_check = 0

    def __call__(self, thinking: str, tokens: int) -> str | None:
        self.last_tokens = tokens
        if self.reason is not None:
            return None
        if self.budget is not None and tokens >= self.budget:
            return self._fire("budget", f"thinking budget of {self.budget:,} tokens reached", tokens, BUDGET_TEXT)
        if self.loops is None:
            return None
        found = self._repeated_paragraph(thinking) or self._repeated_ngram(thinking, tokens)
        if found:
            return self._fire("loop", found, tokens, LOOP_TEXT)
        return None

    def note(self) -> str | None:
        """One line for the user saying why the thinking was cut short, if it was."""
        if self.reason is None:
            return None
        if self.reason == "budget":
            return f"{self.detail}; the model was told to answer now"
        return f"thinking loop detected ({self.detail}); the model was told to answer now"

    def _fire(self, reason: str, detail: str, tokens: int, text: str) -> str:
        self.reason, self.detail, self.at_tokens = reason, detail, tokens
        return text

    def _repeated_paragraph(self, thinking: str) -> str | None:
        rule = self.loops
        assert rule is not None
        if len(thinking) < self._scanned:  # a different text: start over
            self._paragraphs.clear()
            self._scanned = 0
        end = _last_break(thinking, self._scanned)
        if end is None:
            return None
        fresh = thinking[self._scanned : end.start()]
        self._scanned = end.end()
        for paragraph in _PARAGRAPH_BREAK.split(fresh):
            key = " ".join(paragraph.lower().split())
            if len(key) < rule.min_paragraph_chars:
                continue
            self._paragraphs[key] += 1
            if self._paragraphs[key] >= rule.paragraph_repeats:
                return f"a paragraph repeated {self._paragraphs[key]} times"
        return None

    def _repeated_ngram(self, thinking: str, tokens: int) -> str | None:
        rule = self.loops
        assert rule is not None
        if tokens < self._next_ngram_check:
            return None
        self._next_ngram_check = tokens + rule.check_every
        words = _tail_words(thinking, rule.tail_words)
        if len(words) < rule.ngram * rule.ngram_repeats:
            return None
        grams = Counter(tuple(words[i : i + rule.ngram]) for i in range(len(words) - rule.ngram + 1))
        _, count = grams.most_common(1)[0]
        if count >= rule.ngram_repeats:
            return f"{rule.ngram} words repeated {count} times"
        return None


def _last_break(text: str, start: int) -> re.Match[str] | None:
    last = None
    for match in _PARAGRAPH_BREAK.finditer(text, start):
        last = match
    return last


def _tail_words(text: str, n: int) -> list[str]:
    """The last `n` words, lower-cased, reading only as much of the tail as needed."""
    chars = 8 * n
    while True:
        words = text[-chars:].lower().split()
        if len(words) > n or chars >= len(text):
            return words[-n:]
        chars *= 2
