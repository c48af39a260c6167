"""Final answers in a reply (\\boxed{}, ####, "answer is", last number) and their voting form."""

from __future__ import annotations

import re

from qwq_local.dialog.think import CLOSE as END_THINK
from qwq_local.dialog.think import split_at_close as split_thinking

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\"?\s*(?:is\b|:)\s*:?[ \t]*([^\n]*)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+(?:\.\d+)?)?")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_WRAPPERS = " \t*$\"'`:;,"


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the balanced `{...}` opening at `start` and the index after it, or None."""
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # an escaped character such as \{ never opens or closes
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def boxed_answers(text: str) -> list[str]:
    """Every non-empty `\\boxed{...}`, `\\fbox{...}` or `\\boxed x` content, in order."""
    found: list[str] = []
    for match in _BOX.finditer(text):
        i = match.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            braced = _braced(text, i)
            content = braced[0] if braced else ""
        elif i > match.end():
            bare = re.match(r"[^\s$]+", text[i:])
            content = bare.group(0).rstrip(".,;") if bare else ""
        else:
            content = ""
        if content.strip():
            found.append(content.strip())
    return found


def _answer_phrase(raw: str) -> str | None:
    """The answer in the words after "answer is": up to the sentence end, wrappers stripped."""
    quoted = re.match(r"\s*\"([^\"\n]+)\"", raw)
    if quoted:
        raw = quoted.group(1)
    phrase = _SENTENCE_END.split(raw.strip(), maxsplit=1)[0].strip(_WRAPPERS).rstrip(".")
    phrase = phrase.strip(_WRAPPERS)
    boxed = boxed_answers(phrase)
    if boxed:
        return boxed[-1]
    if not phrase:
        return None
    # Only a phrase that looks like an answer counts, so "the answer is not obvious" does not.
    if re.search(r"[\d\\]", phrase) or re.fullmatch(r"\(?[\w.+-]+\)?", phrase):
        return phrase
    return None


def find_explicit_answer(text: str) -> str | None:
    """The answer `text` states outright: last \\boxed{}, else last `####`, else last "answer is"."""
    boxed = boxed_answers(text)
    if boxed:
        return boxed[-1]
    for pattern in (_HASHES, _ANSWER_IS):
        for match in reversed(list(pattern.finditer(text))):
            phrase = _answer_phrase(match.group(1))
            if phrase:
                return phrase
    return None


def last_number(text: str) -> str | None:
    """The last number written in `text` (thousands commas, decimals and a/b fractions kept)."""
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def extract_final_answer(
    text: str, end_think: str = END_THINK, *, allow_last_number: bool = True
) -> str | None:
    """The reply's final answer: stated in the answer part, else its last number, else stated in the thinking.

    The answer part is the text after `end_think`, or the whole text when there is none.
    """
    thinking, answer = split_thinking(text, end_think)
    found = find_explicit_answer(answer)
    if found is None and allow_last_number:
        found = last_number(answer)
    if found is None and thinking:
        found = find_explicit_answer(thinking)
    return found


_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\(?:left|right)(?![A-Za-z])|\\[!,;: ]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TRAILING_ZEROS = re.compile(r"(\d)\.0+(?!\d)|(\d\.\d*?[1-9])0+(?!\d)")


def normalize_for_vote(answer: str) -> str:
    """A canonical spelling so equal answers vote together: `$1,000.0$` and `1000` agree."""
    text = answer.strip()
    boxed = boxed_answers(text)
    if boxed and text.startswith(("\\boxed", "\\fbox")):
        text = boxed[-1]
    for _ in range(3):
        text = _TEXT_CMD.sub(r"\1", text)
    text = _SPACING.sub("", text)
    text = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", text)
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "%")
    text = _THOUSANDS.sub("", text)
    text = re.sub(r"\s+", "", text)
    text = _TRAILING_ZEROS.sub(lambda m: m.group(1) or m.group(2), text)
    return text.rstrip(".")
