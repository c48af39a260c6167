"""Whether a reply solves a benchmark problem: GSM8K by number, MATH by LaTeX equivalence, MBPP by its tests."""

from __future__ import annotations

import ast
import re
import signal
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any, TypeVar

from qwq_local.problems.datasets import Problem
from qwq_local.problems.latex import MathParseError, load_sympy, parse_latex
from qwq_local.problems.sandbox import run_python
from qwq_local.dialog.think import split_at_close
from qwq_local.search.answer import (
    boxed_answers,
    extract_final_answer,
    normalize_for_vote,
)

MATH_SECONDS = 5.0  # per comparison, so a pathological expression can't hang a benchmark
MBPP_SECONDS = 10.0  # per program (solution + setup + asserts)
T = TypeVar("T")


def check(problem: Problem, reply_text: str, final_answer: str | None) -> bool:
    """True when the reply answers `problem` correctly (MBPP: its code passes the problem's tests)."""
    if problem.kind == "mbpp":
        return code_passes(problem, reply_text, final_answer)
    answer = final_answer if final_answer and final_answer.strip() else extract_final_answer(reply_text)
    if answer is None:
        return False
    if problem.kind == "gsm8k":
        return numbers_equal(answer, problem.answer)
    return math_equal(answer, problem.answer)


# GSM8K ---------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?")
_SIMPLE_FRAC = re.compile(r"\\frac\{(-?\d+)\}\{(\d+)\}")


def parse_number(text: str) -> Fraction | None:
    """The number an answer states, ignoring $, thousands commas, units and a trailing .0."""
    value = normalize_for_vote(text.replace("\u2212", "-"))
    value = _SIMPLE_FRAC.sub(r"\1/\2", value).replace("\\%", "").replace("%", "")
    value = value.rsplit("=", 1)[-1]  # "3*6=18" states 18
    match = _NUMBER.search(value)
    if match is None:
        return None
    try:
        return Fraction(match.group(0))
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(answer: str, reference: str) -> bool:
    """GSM8K: the two state the same number."""
    got, want = parse_number(answer), parse_number(reference)
    return got is not None and got == want


# MATH ----------------------------------------------------------------------------------------------

_UNIT_WORDS = (
    "cm|mm|km|m|meters?|centimeters?|inch(?:es)?|feet|foot|ft|yards?|miles?|units?|sq|square|"
    "degrees?|dollars?|cents?|hours?|minutes?|seconds?|days?|weeks?|years?|mph|pounds?|ounces?|"
    "cups?|gallons?|liters?"
)
_SPACED_TEXT = re.compile(r"\\(?:text|textrm|mbox|mathrm)\{\s+[^{}]*\}(?:\^\{?\d\}?)?\s*$")  # \text{ cm}^2
_TEXT_AFTER_NUMBER = re.compile(r"(?<=[\d}])\s*\\(?:text|textrm|mbox)\{\s*(?:" + _UNIT_WORDS + r")\s*\}(?:\^\{?\d\}?)?")
_WORD_UNIT = re.compile(r"(?<=\d)\s+(?:" + _UNIT_WORDS + r")(?:\^\{?\d\}?)?\s*$")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree")
_SHORT_LHS = re.compile(r"^[A-Za-z]{1,2}(?:_\{?\w\}?)?(?:=(?!=)|\\in(?![A-Za-z]))")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_COMMA = "\ue000"  # stands in for an item-separating comma while normalize_for_vote runs


def normalize_math(answer: str) -> str:
    """MATH answer normal form: units, degrees, \\left/\\right, \\dfrac, spacing and `x=` dropped."""
    text = answer.strip()
    boxed = boxed_answers(text)
    if boxed and text.startswith(("\\boxed", "\\fbox")):
        text = boxed[-1]
    text = text.strip().strip("$").strip()
    text = _SPACED_TEXT.sub("", text)
    text = _TEXT_AFTER_NUMBER.sub("", text)
    text = _WORD_UNIT.sub("", text)
    text = _DEGREES.sub("", text)
    text = re.sub(r"\\\\\s+", r"\\\\", text)  # a row break `\\ ` is not the spacing `\ `
    compact = re.sub(r"\\!|\s", "", text)
    if _THOUSANDS.fullmatch(compact):
        text = compact.replace(",", "")
    else:  # commas separate items here: keep normalize_for_vote from reading (2,12) as 212
        text = re.sub(r"(?<!\\),", _COMMA, text)
    text = normalize_for_vote(text).replace(_COMMA, ",")
    text = text.replace("\\displaystyle", "").replace("\\%", "").replace("%", "")
    text = _SHORT_LHS.sub("", text)
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", text)
    text = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", text)
    text = re.sub(r"^(-?)(\d+)/(\d+)$", r"\1\\frac{\2}{\3}", text)
    text = re.sub(r"(?<![\d}])\.(?=\d)", "0.", text)  # .5 -> 0.5
    return text.rstrip(".")


def math_equal(answer: str, reference: str, seconds: float = MATH_SECONDS) -> bool:
    """MATH: equal after normalization as strings, numbers or sympy expressions (tuples elementwise)."""
    got, want = normalize_math(answer), normalize_math(reference)
    if got == want:
        return True
    if not got or not want:
        return False
    load_sympy()  # imported outside the time limit
    return bool(within(seconds, lambda: _equivalent(got, want)))


def _split_top(text: str, separators: str) -> list[str]:
    """`text` split at the separators that are outside every bracket."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char in separators and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _encloses(text: str) -> bool:
    """The first character's bracket closes only at the last character."""
    depth = 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if depth == 0 and i < len(text) - 1:
            return False
    return depth == 0


def _sequence(text: str) -> tuple[str, list[str]] | None:
    """(kind, items) of a tuple, interval, set, bare list or matrix; None for a single value."""
    matrix = re.fullmatch(r"\\begin\{([pbv]?matrix)\}(.*)\\end\{\1\}", text)
    if matrix:
        rows = [row.split("&") for row in matrix.group(2).split("\\\\") if row]
        return f"{matrix.group(1)}{len(rows)}x{len(rows[0]) if rows else 0}", [c for r in rows for c in r]
    for opening, closing in (("\\{", "\\}"), ("(", ")"), ("[", "]"), ("(", "]"), ("[", ")")):
        if text.startswith(opening) and text.endswith(closing) and len(text) > len(opening) + len(closing):
            inner = text[len(opening) : len(text) - len(closing)]
            plain = opening in "([" and closing in ")]"
            if plain and not _encloses("(" + inner + ")"):
                continue
            items = _split_top(inner, ",")
            if len(items) > 1 or opening == "\\{":
                return opening + closing, items
    items = _split_top(text, ",")
    return ("list", items) if len(items) > 1 else None


def _equivalent(got: str, want: str) -> bool:
    """Normalized answers are the same value, sequence or equation."""
    got_seq, want_seq = _sequence(got), _sequence(want)
    if got_seq is None and want_seq is None:
        return _same_value(got, want)
    if got_seq is None or want_seq is None:
        return False
    (got_kind, got_items), (want_kind, want_items) = got_seq, want_seq
    if len(got_items) != len(want_items):
        return False
    if got_kind != want_kind and {got_kind, want_kind} != {"list", "\\{\\}"}:
        return False
    if got_kind in ("list", "\\{\\}"):  # solutions listed in any order
        left = list(want_items)
        for item in got_items:
            match = next((i for i, other in enumerate(left) if _same_value(item, other)), None)
            if match is None:
                return False
            left.pop(match)
        return True
    return all(_same_value(a, b) for a, b in zip(got_items, want_items))


def _same_value(got: str, want: str) -> bool:
    """One value (or equation) each: equal as strings or as sympy expressions."""
    if got == want:
        return True
    got_sides, want_sides = got.split("="), want.split("=")
    if len(got_sides) != len(want_sides) or len(got_sides) > 2:
        return False
    if len(got_sides) == 2:
        return _same_value(got_sides[0], want_sides[0]) and _same_value(got_sides[1], want_sides[1])
    try:
        return _sympy_equal(parse_latex(got), parse_latex(want))
    except MathParseError:
        return False


def _sympy_equal(a: Any, b: Any) -> bool:
    sympy = load_sympy()
    if a == b:
        return True
    try:
        difference = a - b
        if not difference.free_symbols:
            got, want = complex(sympy.N(a, 30)), complex(sympy.N(b, 30))
            return abs(got - want) <= 1e-9 * max(1.0, abs(want))
        return bool(sympy.simplify(difference) == 0)
    except Exception:  # noqa: BLE001 - sympy raises many kinds; what it can't compare is not equal
        return False


class _Late(BaseException):
    """Raised by the alarm inside a comparison that ran out of time (BaseException: sympy catches Exception)."""


def within(seconds: float, compute: Callable[[], T]) -> T | None:
    """compute() if it finishes within `seconds`, else None.

    In the main thread an interval timer interrupts it; elsewhere it runs in a daemon thread
    that is abandoned (left to finish on its own) when late.
    """
    main = threading.current_thread() is threading.main_thread()
    if main and hasattr(signal, "setitimer") and signal.getitimer(signal.ITIMER_REAL)[0] == 0:

        def alarm(_signum: int, _frame: object) -> None:
            raise _Late

        previous = signal.signal(signal.SIGALRM, alarm)
        try:
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                return compute()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Late:
            return None
        finally:
            signal.signal(signal.SIGALRM, previous)
    box: list[T] = []
    worker = threading.Thread(target=lambda: box.append(compute()), daemon=True)
    worker.start()
    worker.join(seconds)
    return box[0] if box else None


# MBPP ----------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_CODE_START = re.compile(r"^\s*(?:def|class|import|from)\s", re.MULTILINE)


def _looks_like_code(text: str) -> bool:
    if not _CODE_START.search(text):
        return False
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return True


def extract_code(reply_text: str, final_answer: str | None = None) -> str | None:
    """The reply's program: its last ```python block (else last plain ``` block), else code-looking text."""
    _, answer = split_at_close(reply_text)
    sources = [answer, final_answer or ""]
    for source in sources:
        blocks = _FENCE.findall(source)
        python = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
        chosen = python or [code for lang, code in blocks if not lang]
        if chosen:
            return str(chosen[-1])
    for source in reversed(sources):
        if source.strip() and _looks_like_code(source):
            return source
    return None


def mbpp_program(code: str, problem: Problem) -> str:
    """Solution, setup and asserts as one script; the solution's `if __name__ == "__main__":` demo is skipped."""
    tests = "\n".join(problem.tests)
    return f"__name__ = '__solution__'\n{code}\n\n{problem.setup}\n\n{tests}\n"


def code_passes(problem: Problem, reply_text: str, final_answer: str | None = None) -> bool:
    """MBPP: the reply's code, the setup and every assert run cleanly in the sandbox."""
    code = extract_code(reply_text, final_answer)
    if code is None or not problem.tests:
        return False
    return run_python(mbpp_program(code, problem), timeout=MBPP_SECONDS).ok
