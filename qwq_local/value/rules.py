"""A scorer that needs no model: it recomputes a step's arithmetic, parses its code and spots repeats.

Values (first rule that applies wins):

* 0.1 `EMPTY`: the step has no text.
* 0.0 `WRONG`: an equation such as `48/2 = 25` does not check out.
* 0.1 `BAD_CODE`: a Python block (or Python-looking lines) that does not parse. Code is parsed
  with `ast.parse`, never run. A fenced block is judged once its closing fence is written.
* 0.1 `REPEAT`: the step repeats an earlier one: the same words (case and punctuation aside), or,
  for steps of 8 words or more, word sequences at least 90% similar (difflib ratio).
* 0.7 `CHECKED`: at least one equation was recomputed and all are right.
* 0.5 `NEUTRAL`: nothing to check.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from fractions import Fraction
from typing import Sequence

from qwq_local.search.protocol import Candidate

EMPTY = 0.1
WRONG = 0.0
BAD_CODE = 0.1
REPEAT = 0.1
CHECKED = 0.7
NEUTRAL = 0.5


# ---------------------------------------------------------------- arithmetic


class _Unevaluable(Exception):
    pass


_MAX_EXPONENT = 64
_MAX_MAGNITUDE = Fraction(10) ** 30


def _evaluate(expression: str) -> Fraction:
    """The exact value of a numeric expression (+ - * / ** and parentheses only), without eval()."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        return _value(tree.body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # a very long chain overflows the stack
        raise _Unevaluable from None


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant):
        if type(node.value) is int:  # not bool
            return Fraction(node.value)
        if type(node.value) is float:
            return Fraction(str(node.value))
        raise _Unevaluable
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _value(node.operand)
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp):
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Add):
            result = left + right
        elif isinstance(node.op, ast.Sub):
            result = left - right
        elif isinstance(node.op, ast.Mult):
            result = left * right
        elif isinstance(node.op, ast.Div) and right != 0:
            result = left / right
        elif (
            isinstance(node.op, ast.Pow)
            and right.denominator == 1
            and abs(right) <= _MAX_EXPONENT
            and abs(left) <= 10**6
            and (left != 0 or right >= 0)
        ):
            result = left ** int(right)
        else:
            raise _Unevaluable
        if abs(result) > _MAX_MAGNITUDE:
            raise _Unevaluable
        return result
    raise _Unevaluable


_BARE_NUMBER = re.compile(r"\(*\s*[-+]?\s*(\d+)(?:\.(\d*))?\s*\)*")
# Words after which a number is an operand of a spoken operation ("half of 48 = 24").
_LEFT_WORDS = {
    "of", "times", "plus", "minus", "by", "over", "into", "than", "half", "twice", "double", "triple",
    "thrice", "third", "quarter", "fourth", "fifth", "percent", "squared", "cubed", "root", "sqrt",
    "log", "ln", "sin", "cos", "tan", "exp", "mod", "per",
}
_RIGHT_WORDS = {"times", "of", "plus", "minus", "divided", "multiplied", "over", "squared", "cubed",
                "percent", "mod", "to"}
_RUN = re.compile(r"[ \t0-9.+\-*/()=]*=[ \t0-9.+\-*/()=]*")


def _normalize_math(text: str) -> str:
    """Prose math rewritten as Python operators: ×, \\times, `12 x 3`, \\frac, ^, %, $ and 1,000."""
    for _ in range(4):
        text = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"((\1)/(\2))", text)
    text = re.sub(r"\^\s*\{([^{}]*)\}", r"^(\1)", text)
    text = re.sub(r"\\times|\\cdot|[×·∗]", "*", text)
    text = re.sub(r"\\div|÷", "/", text)
    text = re.sub(r"[−–]", "-", text)
    text = re.sub(r"\\left|\\right|\\[,!;: ()\[\]]", " ", text)
    text = text.replace("\\$", "").replace("$", "").replace("{,}", "").replace("\\%", "%")
    text = re.sub(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+)(?![\d,])", lambda m: m.group(1).replace(",", ""), text)
    text = re.sub(r"(?<=[\d)])[ \t]*[xX][ \t]*(?=[\d(])", " * ", text)
    text = re.sub(r"(\d+(?:\.\d+)?)[ \t]*%", r"(\1/100)", text)
    return text.replace("^", "**")


def _word_before(text: str, start: int) -> str:
    match = re.search(r"([A-Za-z]+)[^A-Za-z\n]*$", text[max(0, start - 40) : start])
    return match.group(1).lower() if match else ""


def _word_after(text: str, end: int) -> str:
    match = re.match(r"[^A-Za-z\n]*?([A-Za-z]+)", text[end : end + 40])
    return match.group(1).lower() if match else ""


def _continues_left(text: str, start: int, part: str) -> bool:
    """Whether the chain's first part is only the tail of an expression with words or variables."""
    head = part.lstrip()
    glued = start > 0 and part[:1] not in (" ", "\t") and (text[start - 1].isalnum() or text[start - 1] in "_}]\\")
    return bool(
        glued
        or head[:1] in ("+", "*", "/", ")")
        or head.startswith("- ")
        or _word_before(text, start) in _LEFT_WORDS
    )


def _continues_right(text: str, end: int, part: str) -> bool:
    """Whether the chain's last part is only the head of a longer expression."""
    tail = part.rstrip()
    if tail.endswith("(") and tail[:-1].rstrip()[-1:] not in ("+", "-", "*", "/"):
        return False  # "= 3.33 (rounded)": a parenthetical opens, the expression has ended
    glued = end < len(text) and part[-1:] not in (" ", "\t") and (text[end].isalnum() or text[end] in "_{[\\")
    return bool(glued or tail[-1:] in ("+", "-", "*", "/", "(") or _word_after(text, end) in _RIGHT_WORDS)


def _decimals(part: str) -> int | None:
    """Decimal places of a bare number such as `3.25` or `(7)`; None for anything else."""
    match = _BARE_NUMBER.fullmatch(part.strip())
    if not match:
        return None
    return len(match.group(2) or "")


def _agrees(left: str, right: str) -> bool | None:
    """Whether two sides of `=` have the same value; None when they cannot be compared."""
    places = (_decimals(left), _decimals(right))
    if None not in places:
        return None  # "48 = 24" compares two quantities named in prose, not a computation
    try:
        a, b = _evaluate(left), _evaluate(right)
    except _Unevaluable:
        return None
    if a == b:
        return True
    for computed, stated, places_stated in ((a, b, places[1]), (b, a, places[0])):
        if places_stated is None:
            continue
        unit = Fraction(1, 10**places_stated)
        # A rounded or truncated literal is right when the exact value needs more decimals.
        if (computed / unit).denominator != 1 and abs(computed - stated) < unit:
            return True
    return False


def _clean_part(part: str) -> str:
    """One side of `=` without sentence dots and parentheses the equation opened or closed around it."""
    part = re.sub(r"^\s*\.\s+", "", part).strip().rstrip(".").strip()
    part = part.rstrip("( \t").lstrip(") \t")
    while part.startswith("(") and part.count("(") > part.count(")"):
        part = part[1:].strip()
    while part.endswith(")") and part.count(")") > part.count("("):
        part = part[:-1].strip()
    return part


def check_arithmetic(text: str) -> bool | None:
    """False if any equation in `text` is wrong, True if some were checked and all hold, else None."""
    text = _normalize_math(text)
    checked = False
    for match in _RUN.finditer(text):
        run = match.group(0)
        if re.search(r"=\s*=", run):
            continue  # `==`: a comparison, not a claim
        parts = run.split("=")
        start, end = match.start(), match.end()
        if _continues_left(text, start, parts[0]):
            parts = parts[1:]
        if parts and _continues_right(text, end, parts[-1]):
            parts = parts[:-1]
        parts = [_clean_part(p) for p in parts]
        parts = [p for p in parts if p]
        for left, right in zip(parts, parts[1:], strict=False):
            verdict = _agrees(left, right)
            if verdict is False:
                return False
            checked = checked or verdict is True
    return True if checked else None


# ---------------------------------------------------------------- code

_FENCE = re.compile(r"^[ \t]*```", re.MULTILINE)
_PY_STRONG = re.compile(
    r"^\s*(def \w+\s*\(|class \w+|import \w|from [\w.]+ import |return\b|print\(|for \w+(\s*,\s*\w+)* in .*:\s*$"
    r"|while .+:\s*$|if .+:\s*$|elif .+:\s*$|else:\s*$|try:\s*$|except\b.*:\s*$|@\w)"
)
_PY_LINE = re.compile(r"^\s*(#|[A-Za-z_][\w.\[\], ]*\s*([-+*/%]|//)?=\s*\S|\w+\(.*\)\s*$|pass\s*$|break\s*$)")
_INCOMPLETE = ("unexpected EOF", "expected an indented block", "was never closed", "unterminated triple-quoted")


def _parses(source: str, *, fragment: bool) -> bool:
    """Whether `source` is valid Python; a `fragment` may stop mid-statement (it goes on in the next step)."""
    try:
        ast.parse(textwrap.dedent(source))
    except SyntaxError as exc:
        return fragment and any(marker in str(exc.msg) for marker in _INCOMPLETE)
    except (ValueError, RecursionError, MemoryError):
        return False
    return True


def _code_blocks(full: str) -> list[tuple[int, int, str, str, bool]]:
    """Fenced blocks of `full`: (start, end, language, code, closed), start/end spanning the fences."""
    fences = [m.start() for m in _FENCE.finditer(full)]
    blocks = []
    for i in range(0, len(fences), 2):
        start = fences[i]
        header_end = full.find("\n", start)
        header_end = len(full) if header_end < 0 else header_end
        language = full[start:header_end].strip().strip("`").strip().lower()
        if i + 1 < len(fences):
            close = fences[i + 1]
            end = full.find("\n", close)
            end = len(full) if end < 0 else end
            blocks.append((start, end, language, full[header_end + 1 : close], True))
        else:
            blocks.append((start, len(full), language, full[header_end + 1 :], False))
    return blocks


def _looks_like_python(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not any(_PY_STRONG.match(line) for line in lines):
        return False
    pythonish = sum(
        1 for line in lines if _PY_STRONG.match(line) or _PY_LINE.match(line) or line.startswith((" ", "\t"))
    )
    return pythonish >= 0.7 * len(lines)


def _split_code(steps: Sequence[str], text: str) -> tuple[str, bool]:
    """The step's prose (code removed) and whether all Python the step completes parses."""
    offset = sum(len(s) for s in steps)
    full = "".join(steps) + text
    prose: list[str] = []
    cursor = offset
    ok = True
    for start, end, language, code, closed in _code_blocks(full):
        if end <= offset:
            continue
        prose.append(full[cursor:max(cursor, start)])
        cursor = max(cursor, end)
        python = language in ("python", "py", "python3") or (language == "" and _looks_like_python(code))
        if python and closed and not _parses(code, fragment=False):
            ok = False
    prose.append(full[cursor:])
    plain = "".join(prose)
    if _looks_like_python(plain) and not _parses(plain, fragment=True):
        ok = False
    return plain, ok


# ---------------------------------------------------------------- repeats


def _normalize_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[.,/][0-9]+)*|[+\-*/=^]", text.lower())


def _is_repeat(steps: Sequence[str], text: str, similarity: float) -> bool:
    words = _normalize_words(text)
    if not words:
        return False
    for step in steps:
        earlier = _normalize_words(step)
        if earlier == words:
            return True
        if len(words) >= 8 and len(earlier) >= 8:
            matcher = SequenceMatcher(None, earlier, words, autojunk=False)
            if (
                matcher.real_quick_ratio() >= similarity
                and matcher.quick_ratio() >= similarity
                and matcher.ratio() >= similarity
            ):
                return True
    return False


@dataclass
class RulesScorer:
    """Process reward from checks anyone could do by hand (see the module doc for the values)."""

    similarity: float = 0.9  # word-sequence similarity (difflib ratio) from which a step repeats an earlier one
    name: str = field(default="rules", init=False)

    def score(self, question: str, steps: Sequence[str], candidate: Candidate) -> float:
        text = candidate.text
        if not text.strip():
            return EMPTY
        prose, code_ok = _split_code(steps, text)
        arithmetic = check_arithmetic(prose)
        if arithmetic is False:
            return WRONG
        if not code_ok:
            return BAD_CODE
        if _is_repeat(steps, text, self.similarity):
            return REPEAT
        return CHECKED if arithmetic else NEUTRAL
