"""The program format's answers: a reply's Python program runs in the sandbox, and what it prints is the answer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from qwq_local.dialog.think import CLOSE, split_at_close
from qwq_local.problems.checks import extract_code
from qwq_local.problems.sandbox import SandboxResult, run_python
from qwq_local.search.answer import find_explicit_answer, last_number

PROGRAM_SECONDS = 10  # a reply's program gets this long in the sandbox (GSM8K's programs take milliseconds)
PROGRAM_MEMORY_MB = 256
# What a math program may import besides the standard library (read-only in the sandbox): sympy, as PoT and
# rStar-Math programs use it for exact fractions, roots and equations, and mpmath, the one package sympy needs.
PROGRAM_LIBRARIES = ("sympy", "mpmath")
LATEX_SECONDS = 10
MAX_ANSWER_CHARS = 200  # a longer last line is output, not an answer
# Words a printed expression may hold (sympy's and LaTeX's names); any other word makes the line a sentence.
_MATH_NAMES = frozenset({"sqrt", "exp", "log", "ln", "sin", "cos", "tan", "asin", "acos", "atan", "pi", "oo", "inf",
                         "infty", "frac", "dfrac", "cdot", "times", "Rational", "Abs", "mod", "gcd", "lcm",
                         "Interval", "open", "Lopen", "Ropen", "Union", "FiniteSet", "Matrix", "Eq", "Integer",
                         "Float"})
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")


@dataclass(frozen=True)
class ProgramRun:
    """What running a reply's program gave: the answer it printed, and whether it ran (None: the reply had none)."""

    answer: str | None
    ran: bool | None
    error: str | None = None  # why there is no answer: the program's last error line, a timeout, no output


def program_answer(text: str, end_think: str = CLOSE) -> str | None:
    """The last line a reply's program prints when run in the sandbox; None when the program fails, times out or
    prints nothing (a program that does not run gives no answer: the filter of rStar-Math's code-checked steps).
    A reply without a program answers with what it states outright (a `\\boxed{}`), never with a stray number."""
    return run_reply_program(text, end_think).answer


def run_reply_program(text: str, end_think: str = CLOSE) -> ProgramRun:
    """Run the program in a reply's answer part (after the thinking) in the sandbox; see `program_answer`."""
    _, answer_part = split_at_close(text, end_think)
    code = extract_code(answer_part)
    if code is None:
        stated = find_explicit_answer(answer_part)
        return ProgramRun(stated, ran=None, error=None if stated else "the reply holds no program")
    result = run_python(code, timeout=PROGRAM_SECONDS, memory_mb=PROGRAM_MEMORY_MB, libraries=PROGRAM_LIBRARIES)
    if not result.ok:
        return ProgramRun(None, ran=False, error=_failure(result))
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if not lines or len(lines[-1]) > MAX_ANSWER_CHARS:
        return ProgramRun(None, ran=True, error="its program printed no answer" if not lines else
                          "its program's last line is too long to be an answer")
    answer = printed_answer(lines[-1])
    if answer is None:
        return ProgramRun(None, ran=True, error=f"its program's last line states no answer: {lines[-1][:80]}")
    return ProgramRun(as_latex(answer), ran=True)


def _failure(result: SandboxResult) -> str:
    """Why a program failed, in one line: a timeout, or the last line of its error (the exception)."""
    if result.timed_out:
        return f"its program ran out of time ({PROGRAM_SECONDS} s)"
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return f"its program failed: {lines[-1][:160]}" if lines else f"its program failed (exit {result.returncode})"


_SYMPY_LOOKING = re.compile(r"[A-Za-z]|\*\*")
_LETTER = re.compile(r"\(?\s*[A-Za-z]\s*\)?")  # "E", "(B)": a choice or a name, never sympy's E, I, N or S
# In the sandbox: the printed line as sympy reads it, in LaTeX; nothing for what is not a sympy value.
_TO_LATEX = """\
import sympy
value = sympy.sympify({line!r})
if isinstance(value, sympy.Basic):
    print(sympy.latex(value))
"""


@lru_cache(maxsize=1024)  # the paths of one vote mostly print the same answer: read it once
def as_latex(expression: str) -> str:
    """A printed sympy expression in LaTeX, as MATH's answers are written ("3*pi/4" is `\\frac{3 \\pi}{4}`, "oo"
    is `\\infty`, "x**2 + 1" is `x^{2} + 1`), so that equal answers vote together and check as equal. Reading it
    (sympify) evaluates Python, so that runs in the sandbox as well. A number, a lone letter (a choice), LaTeX
    already, or what sympy cannot read as a value stays as it is."""
    if "\\" in expression or not _SYMPY_LOOKING.search(expression) or _LETTER.fullmatch(expression):
        return expression
    try:
        float(expression)  # 1e-7, inf: a number already
        return expression
    except ValueError:
        pass
    code = _TO_LATEX.format(line=expression)
    result = run_python(code, timeout=LATEX_SECONDS, memory_mb=PROGRAM_MEMORY_MB, libraries=PROGRAM_LIBRARIES)
    latex = result.stdout.strip()
    readable = latex and "\n" not in latex and "\\mathtt" not in latex and len(latex) <= MAX_ANSWER_CHARS
    return latex if result.ok and readable else expression


def printed_answer(line: str) -> str | None:
    """The answer in a program's last printed line: the line itself when it is a value or an expression, what it
    states when it says so (`\\boxed{}`, "the answer is"), else the last number of a sentence ("Baldur gets 55
    liters a day." is 55: the same answer as a program that prints 55)."""
    stated = find_explicit_answer(line)
    if stated is not None:
        return stated
    if any(word not in _MATH_NAMES for word in _WORD.findall(line)):
        return last_number(line)
    return line
