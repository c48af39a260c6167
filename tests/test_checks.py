"""Answer checks for GSM8K (numbers), MATH-500 (LaTeX equivalence) and MBPP (tests in the sandbox)."""

from __future__ import annotations

import time

import pytest

from qwq_local.problems import checks
from qwq_local.problems.checks import (
    check,
    extract_code,
    math_equal,
    numbers_equal,
    within,
)
from qwq_local.problems.datasets import Problem


def gsm8k(answer: str) -> Problem:
    return Problem(id="g", kind="gsm8k", prompt="How many?", answer=answer)


def math(answer: str) -> Problem:
    return Problem(id="m", kind="math", prompt="Find it.", answer=answer)


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("$1,000", "1000", True),
        ("72.0", "72", True),
        ("\\boxed{72}", "72", True),
        ("$18.00", "18", True),
        ("18 dollars", "18", True),
        ("3 \\times 6 = 18", "18", True),
        ("\\frac{36}{2}", "18", True),
        ("-5", "-5", True),
        ("19", "18", False),
        ("1,000", "100", False),
        ("7.5", "7", False),
        ("no idea", "18", False),
    ],
)
def test_gsm8k_numbers(answer: str, reference: str, expected: bool) -> None:
    assert numbers_equal(answer, reference) is expected


def test_gsm8k_check_falls_back_to_the_reply() -> None:
    reply = "<think>48 + 24</think>\nNatalia sold 48 + 24 = 72 clips.\n\\boxed{72}"
    assert check(gsm8k("72"), reply, None)
    assert check(gsm8k("72"), reply, "")
    assert check(gsm8k("72"), "whatever", "$72")
    assert not check(gsm8k("72"), reply, "71")
    assert not check(gsm8k("72"), "I don't know.", None)


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac12", "\\frac{1}{2}"),
        ("0.5", "\\dfrac12"),
        (".5", "\\tfrac{1}{2}"),
        ("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\left( 3, \\dfrac{\\pi}{2} \\right)", "(3, \\pi/2)"),
        ("10", "10^\\circ"),
        ("10^{\\circ}", "10"),
        ("5\\text{ cm}", "5"),
        ("5 \\text{ cm}^2", "5"),
        ("12 inches", "12"),
        ("\\text{Evelyn}", "\\text{Evelyn}"),
        ("x = 5", "5"),
        ("3\\sqrt{13}", "\\sqrt{117}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("\\frac{\\sqrt{3}}{2}", "\\frac12 \\sqrt 3"),
        ("-5i + 6", "6 - 5i"),
        ("p - q", "-q+p"),
        ("(x-1)(x+1)", "x^2 - 1"),
        ("2\\pi r", "2 r \\pi"),
        ("-2, 1", "1,-2"),
        ("\\{2, 1\\}", "\\{1,2\\}"),
        ("11111111100", "11,\\! 111,\\! 111,\\! 100"),
        ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{pmatrix}0.2\\\\-3.6\\end{pmatrix}"),
        ("(2, 12) \\cup (12, 102)", "(2,12) \\cup (12,102)"),
        ("[-2,7]", "x \\in [-2,7]"),
        ("10\\%", "10"),
        ("\\$18.90", "18.9"),
        ("52_8", "52_8"),
        ("\\sin^2 x + \\cos^2 x", "1"),
        ("3!", "6"),
        ("\\infty", "\\infty"),
        # the forms the hand-written checker missed (issue 24)
        ("(12, 102) \\cup (2, 12)", "(2,12) \\cup (12,102)"),
        ("[5, \\infty) \\cup (-\\infty, 1]", "(-\\infty,1]\\cup[5,\\infty)"),
        ("\\log_2 8", "3"),
        ("\\binom{5}{2}", "10"),
        ("\\lfloor 3.7 \\rfloor", "3"),
        ("\\pm 2", "2, -2"),
        ("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}"),
    ],
)
def test_math_equivalent_forms(answer: str, reference: str) -> None:
    assert math_equal(answer, reference, seconds=60)  # equivalence, not the time bound (a loaded machine is slow)


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("0.333", "\\frac{1}{3}"),
        ("(3, 1.5708)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("(\\frac{\\pi}{2}, 3)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("[1, 2)", "(1, 2)"),
        ("x = 3", "y = 3"),
        ("(2, 12) \\cup (12, 102)", "(2, 12) \\cup (12, 103)"),
        ("\\log_2 8", "4"),
        ("2", "3"),
        ("x^2 + 1", "x^2 - 1"),
        ("52_8", "42"),
        ("\\text{Evelyn}", "\\text{Angela}"),
        ("", "1"),
        ("1, 2", "1, 2, 3"),
    ],
)
def test_math_wrong_answers_are_rejected(answer: str, reference: str) -> None:
    assert not math_equal(answer, reference)


def test_math_check_uses_the_boxed_answer() -> None:
    problem = math("\\left( 3, \\frac{\\pi}{2} \\right)")
    assert check(problem, "<think>r = 3</think>\nSo $\\boxed{(3, \\frac{\\pi}{2})}$.", None)
    assert not check(problem, "So $\\boxed{(3, \\pi)}$.", None)
    assert check(math("\\frac{14}{3}"), "", "\\dfrac{14}{3}")


def test_a_huge_power_is_cut_off_in_time() -> None:
    start = time.monotonic()
    assert not math_equal("2^{10^{10}}", "1", seconds=1.0)
    assert time.monotonic() - start < 4


def test_a_slow_comparison_gives_up_on_time() -> None:
    def spin() -> bool:
        while True:
            pass

    start = time.monotonic()
    assert within(0.2, spin) is None
    assert within(1.0, lambda: 7) == 7
    assert time.monotonic() - start < 2


MBPP_TASK = Problem(
    id="mbpp_17",
    kind="mbpp",
    prompt="Write a function to find the perimeter of a square.",
    answer="def square_perimeter(a):\n  perimeter=4*a\n  return perimeter",
    tests=(
        "assert square_perimeter(10)==40",
        "assert square_perimeter(5)==20",
        "assert square_perimeter(4)==16",
    ),
    format="code",
)


def test_mbpp_code_passes_its_tests() -> None:
    reply = (
        "<think>\nperimeter is 4a\n```python\ndef square_perimeter(a):\n    return 0\n```\n</think>\n"
        "Here it is:\n```python\ndef square_perimeter(a):\n    return 4 * a\n```\n"
    )
    assert check(MBPP_TASK, reply, None)


def test_mbpp_wrong_code_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "MBPP_SECONDS", 1.0)
    assert not check(MBPP_TASK, "```python\ndef square_perimeter(a):\n    return a * a\n```", None)
    assert not check(MBPP_TASK, "```python\ndef square_perimeter(a)\n    return 4 * a\n```", None)
    assert not check(MBPP_TASK, "The perimeter is 4a.", None)
    assert not check(MBPP_TASK, "```python\ndef square_perimeter(a):\n    while True: pass\n```", None)


def test_mbpp_setup_code_and_a_demo_block() -> None:
    problem = Problem(
        id="t", kind="mbpp", prompt="", answer="", format="code",
        setup="tree = Node(1, Node(2), None)",
        tests=("assert depth(tree) == 2", "assert depth(None) == 0"),
    )
    code = (
        "class Node:\n"
        "    def __init__(self, value, left=None, right=None):\n"
        "        self.value, self.left, self.right = value, left, right\n\n"
        "def depth(node):\n"
        "    return 0 if node is None else 1 + max(depth(node.left), depth(node.right))\n\n"
        "if __name__ == '__main__':\n"
        "    print(depth(Node(int(input()))))\n"
    )
    assert check(problem, code, None)  # a bare program, its demo needing stdin skipped


def test_extract_code_prefers_the_last_python_block() -> None:
    reply = "```\nplain\n```\n```python\nfirst = 1\n```\ntext\n```py\nsecond = 2\n```\n```\nother\n```"
    assert extract_code(reply) == "second = 2\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("import math\nx = math.pi\n") == "import math\nx = math.pi\n"
    assert extract_code("no code, just words") is None
    assert extract_code("text", "```python\ny = 2\n```") == "y = 2\n"
