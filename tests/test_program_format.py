"""`--format program`: the reply is a Python program, the sandbox runs it, and what it prints is the answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwq_local.app import runtime
from qwq_local.cli import app, main
from qwq_local.errors import ExitCode
from qwq_local.problems.programs import ProgramRun, printed_answer, program_answer, run_reply_program
from qwq_local.problems.prompts import build_question, detect_format
from tests.fakes import script_from_tree, write_tiny_gguf
from tests.test_solve_service import ScriptedBackend

PROGRAM = "```python\n# May: half as many\nmay = 48 // 2\nprint('sold:')\nprint(48 + may)\n```\n"


def test_a_program_answers_with_its_last_printed_line_in_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    from qwq_local.problems import programs

    monkeypatch.setattr(programs, "PROGRAM_SECONDS", 1)
    assert program_answer(PROGRAM + "So Natalia sold \\boxed{100} clips.") == "72"  # computed, not written
    assert program_answer("<think>\nprint(5)\n</think>\n\n" + PROGRAM) == "72"  # code in the thinking is not run
    assert program_answer("```python\nx = 48 / 0\nprint(x)\n```\nSo \\boxed{72}.") is None  # fails: no answer
    assert program_answer("```python\nwhile True:\n    pass\n```", "</think>") is None  # killed at the time limit
    assert program_answer("```python\nx = 3\n```") is None  # prints nothing
    assert program_answer("```python\nprint('9' * 500)\n```") is None  # output, not an answer
    assert program_answer("No program: the answer is \\boxed{7}, not 8.") == "7"  # stated outright
    assert program_answer("No program, and 8 is just a number.") is None  # never a stray number
    assert program_answer("```python\nimport socket\nsocket.create_connection(('1.1.1.1', 53))\nprint(1)\n```") is None


def test_a_run_says_whether_the_program_ran_and_why_it_gave_no_answer() -> None:
    assert run_reply_program(PROGRAM) == ProgramRun("72", ran=True)
    assert run_reply_program("```python\nx = 48 / 0\n```") == ProgramRun(
        None, ran=False, error="its program failed: ZeroDivisionError: division by zero")
    assert run_reply_program("```python\nx = 3\n```") == ProgramRun(None, ran=True,
                                                                      error="its program printed no answer")
    assert run_reply_program("```python\nprint('no idea')\n```").error == (
        "its program's last line states no answer: no idea")
    assert run_reply_program("No program: \\boxed{7}.") == ProgramRun("7", ran=None)  # nothing to run
    assert run_reply_program("No program, no answer.").error == "the reply holds no program"


def test_a_math_program_may_use_sympy_and_its_answer_reads_as_latex(monkeypatch: pytest.MonkeyPatch) -> None:
    from qwq_local.problems import programs

    roots = "```python\nimport sympy as sp\nx = sp.symbols('x')\nprint(max(sp.solve(x**2 - 2, x)) / 2)\n```"
    assert program_answer(roots) == "\\frac{\\sqrt{2}}{2}"  # sympy's sqrt(2)/2, written as MATH writes it
    assert program_answer("```python\nfrom sympy import pi\nprint(3 * pi / 4)\n```") == "\\frac{3 \\pi}{4}"
    assert programs.as_latex("Interval(0, oo)") == "\\left[0, \\infty\\right)"
    assert programs.as_latex("72") == "72" and programs.as_latex("\\frac{1}{2}") == "\\frac{1}{2}"  # no run
    for kept in ("E", "(B)", "I", "N", "1e-7", "inf"):  # a choice or a number, not sympy's E, I, N (a function)
        assert programs.as_latex(kept) == kept
    assert programs.as_latex("N(pi)") == "3.14159265358979"  # a value: written as sympy writes it
    assert programs.as_latex("print") == "print"  # sympify reads it as Python's print: not a value, kept
    monkeypatch.setattr(programs, "LATEX_SECONDS", 1)
    assert programs.as_latex("2**10**10**10") == "2**10**10**10"  # too big to read in time: kept as printed
    assert programs.as_latex("sqrt(2") == "sqrt(2"  # not sympy: kept


@pytest.mark.parametrize(("line", "answer"), [
    ("55", "55"), ("55.0", "55.0"), ("30 liters", "30"), ("Baldur gets 55 liters of water every day.", "55"),
    ("Total: $1,250.50", "1,250.50"), ("The answer is 18", "18"), ("\\boxed{7}", "7"), ("no number here", None),
    ("sqrt(2)/2", "sqrt(2)/2"), ("\\frac{1}{2}", "\\frac{1}{2}"), ("3*pi/4", "3*pi/4"), ("(3, 4)", "(3, 4)"),
])
def test_a_printed_sentence_answers_with_its_number_and_an_expression_with_itself(line: str,
                                                                                  answer: str | None) -> None:
    assert printed_answer(line) == answer


def test_the_program_format_is_asked_for_never_guessed() -> None:
    question = build_question("What is 48 + 24?", "program")
    assert question.startswith("What is 48 + 24?\n\n") and "Python program" in question and "print" in question
    assert detect_format("What is 48 + 24? Write a Python program.") != "program"


SCRIPT = script_from_tree({
    "```python\nmay = 48 // 2\n\n": {"print(48 + may)\n```\nThe total is \\boxed{100}.": None},
    "```python\nmay = 48 / 0\n\n": {"print(may)\n```\nSo \\boxed{72}.": None},
})


@pytest.mark.parametrize(("fmt", "answers", "final"), [
    ("program", ["72", None], "72"),  # the programs' outputs: the failing one has none
    ("math", ["100", "72"], "100"),  # the same replies read as math: what they state
])
def test_a_search_in_the_program_format_votes_on_what_the_programs_print(tmp_path: Path, fmt: str,
                                                                          answers: list[str | None],
                                                                          final: str) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    problem = tmp_path / "natalia.md"
    problem.write_text("Natalia sold 48 clips in April and half as many in May. How many in all?\n")
    backend = ScriptedBackend(SCRIPT)
    result = CliRunner().invoke(app, ["solve", str(problem), "--model", str(model), "--strategy", "astar",
                                      "--scorer", "rules", "-K", "2", "-N", "2", "--max-depth", "4", "--widen", "0",
                                      "--completions", "1", "--choose", "vote", "--format", fmt, "--json"],
                                obj=backend)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["format"] == fmt and data["final_answer"] == final
    assert sorted(data["terminal_answers"], key=str) == sorted(answers, key=str)
    [policy] = backend.made
    assert ("Python program" in policy.questions[0]) == (fmt == "program")


def test_bench_accuracy_refuses_formats_it_cannot_ask_before_the_model(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "locate", lambda *a, **k: pytest.fail("got as far as the model"))
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"id": "p0", "question": "1 + 1?", "answer": "#### 2"}) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "accuracy", "--data", str(data), "--strategy", "direct", "--format", "prose"])
    assert exc.value.code == ExitCode.USAGE and "unknown format 'prose'" in capsys.readouterr().err


@pytest.mark.model
def test_bench_accuracy_in_the_program_format_on_the_tiny_model(tmp_path: Path, qwen_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "easy.jsonl"
    data.write_text(json.dumps({"id": "p0", "question": "A farmer has 12 cows and buys 7 more. How many cows "
                                "does he have now?", "answer": "#### 19"}) + "\n")
    results = tmp_path / "runs.jsonl"
    args = ["bench", "accuracy", "--data", str(data), "--strategy", "direct,sc@2", "--model", str(qwen_path),
            "--max-tokens", "200", "--ctx", "2048", "--temperature", "0", "--results", str(results), "--json"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--format", "program"])
    assert exc.value.code == 0
    capsys.readouterr()
    records = {r["strategy"]: r for r in map(json.loads, results.read_text().splitlines())}
    direct = records["direct"]
    assert direct["setup"]["format"] == "program" and "print" in direct["text"]  # it wrote a program
    assert direct["final_answer"] == program_answer(direct["text"])  # and its answer is what that program prints
    assert direct["correct"] == (direct["final_answer"] == "19")
    assert len(records["sc@2"]["extra"]["terminal_answers"]) == 2
    with pytest.raises(SystemExit) as exc:  # runs of another format are not resumed by these
        main(args)
    assert exc.value.code == ExitCode.USAGE and "format 'program' (this run: None)" in capsys.readouterr().err
