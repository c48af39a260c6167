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
from qwq_local.problems.sandbox import run_python
from qwq_local.dialog.think import split_at_close
from qwq_local.search.answer import extract_final_answer, normalize_for_vote

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


def math_equal(answer: str, reference: str, seconds: float = MATH_SECONDS) -> bool:
    """MATH: the two LaTeX answers are the same value, set, interval, tuple, matrix or equation (math-verify)."""
    if not answer.strip() or not reference.strip():
        return False
    if answer.strip() == reference.strip():
        return True
    verifier = _load_math_verify()  # imported outside the time limit
    return bool(within(seconds, lambda: _verified(verifier, answer, reference)))


def _load_math_verify() -> Any:
    """math_verify, imported on first use (it loads sympy and a LaTeX grammar, about a second)."""
    import logging

    import math_verify  # type: ignore[import-untyped]

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # not its notice that timeouts are ours: within()
    return math_verify


def _as_latex(text: str) -> str:
    """A bare answer in math mode, so that math-verify reads all of it; a boxed or $-delimited one as it is."""
    text = text.strip()
    return text if "\\boxed" in text or "\\fbox" in text or text.startswith("$") else f"${text}$"


def _verified(verifier: Any, answer: str, reference: str) -> bool:
    """math-verify's judgement, its own signal timeouts off (within() bounds the time, in any thread)."""
    gold = verifier.parse(_as_latex(reference), parsing_timeout=None)
    target = verifier.parse(_as_latex(answer), parsing_timeout=None)
    return bool(gold and target and verifier.verify(gold, target, timeout_seconds=None))


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
