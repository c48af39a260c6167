"""Problem formats and the instructions QwQ expects for each (math asks for \\boxed{}; program asks for a Python program
whose printed output, run in the sandbox, is the answer)."""

from __future__ import annotations

import re

FORMATS = ("math", "choice", "code", "plain", "program")

INSTRUCTIONS = {
    "math": "Please reason step by step, and put your final answer within \\boxed{}.",
    "choice": (
        "Please show your choice in the answer field with only the choice letter, "
        'e.g., "answer": "C".'
    ),
    "code": "Please write the solution as one Python code block.",
    "plain": "",
    # Program-aided (PAL, arXiv 2211.10435; rStar-Math's checked code): the answer is computed, not written.
    "program": (
        "Write a Python program that solves the problem step by step: each step a short comment and the code "
        "computing it. The program must print only the final answer."
    ),
}

_CHOICE = re.compile(r"^\s*\(?[A-E][).:]\s+\S", re.MULTILINE)
_CODE = re.compile(
    r"\b(write a (python )?function|def |python|implement|return the|your code)\b", re.IGNORECASE
)
_MATH = re.compile(r"(\d|\\frac|\\sqrt|\$|how many|how much|what is|compute|find|solve|calculate)", re.I)


def detect_format(problem: str) -> str:
    """Guess the format where it is obvious: lettered options, a coding request, numbers; else plain (never
    program: that one is asked for)."""
    if len(_CHOICE.findall(problem)) >= 2:
        return "choice"
    if _CODE.search(problem):
        return "code"
    if _MATH.search(problem):
        return "math"
    return "plain"


def build_question(problem: str, fmt: str = "auto") -> str:
    """The user message: the problem, then the format's instruction on its own paragraph."""
    fmt = detect_format(problem) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    text = problem.strip()
    instruction = INSTRUCTIONS[fmt]
    return f"{text}\n\n{instruction}" if instruction else text
