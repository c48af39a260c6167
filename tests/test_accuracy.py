"""The accuracy harness: data loading, resumable results, scores and intervals, the table, JSON and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwq_local.bench.accuracy import (
    AccuracyReport,
    Outcome,
    PairedSolve,
    format_table,
    run_accuracy,
    wilson_interval,
)
from qwq_local.problems.checks import check
from qwq_local.problems.datasets import (
    DATA_FILES,
    Problem,
    default_data_dir,
    load_problems,
)
from qwq_local.errors import ExitCode, InputFileError, UsageError


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# Data sets -----------------------------------------------------------------------------------------


def test_load_each_kind_from_a_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"id": "g1", "question": "2+2?", "answer": "4"},
            {"problem": "Half of 1?", "answer": "\\frac{1}{2}", "level": 1},
            {
                "task_id": 17, "text": "Write a function to find the perimeter of a square.",
                "code": "def square_perimeter(a):\r\n  return 4*a", "test_setup_code": "",
                "test_list": ["assert square_perimeter(10)==40", "assert square_perimeter(5)==20"],
            },
        ],
    )
    gsm, math, mbpp = load_problems(str(path), None)
    assert (gsm.id, gsm.kind, gsm.prompt, gsm.answer, gsm.format) == ("g1", "gsm8k", "2+2?", "4", "math")
    assert (math.id, math.kind, math.answer) == ("mixed_2", "math", "\\frac{1}{2}")
    assert (mbpp.id, mbpp.kind, mbpp.format) == ("mbpp_17", "mbpp", "code")
    assert mbpp.tests == ("assert square_perimeter(10)==40", "assert square_perimeter(5)==20")
    assert mbpp.prompt == (
        "Write a function to find the perimeter of a square.\nYour code should pass these tests:\n\n"
        "assert square_perimeter(10)==40\nassert square_perimeter(5)==20"
    )
    assert [p.id for p in load_problems(str(path), 2)] == ["g1", "mixed_2"]


def test_named_sets_come_from_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / DATA_FILES["gsm8k"], [{"id": f"q{i}", "question": "?", "answer": str(i)} for i in range(5)])
    assert [p.answer for p in load_problems("gsm8k", 3, data_dir=tmp_path)] == ["0", "1", "2"]
    monkeypatch.setenv("QWQ_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    assert len(load_problems("gsm8k", None)) == 5


def test_data_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown data set 'gsm9k'"):
        load_problems("gsm9k", None, data_dir=tmp_path)
    with pytest.raises(InputFileError, match="not found") as missing:
        load_problems("math500", None, data_dir=tmp_path)
    assert missing.value.exit_code == ExitCode.FILE_NOT_FOUND
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1?", "answer": "1"}\n\n{"question": oops}\n')
    with pytest.raises(InputFileError, match=r"bad\.jsonl:3: not valid JSON"):
        load_problems(str(bad), None)
    write_jsonl(bad, [{"prompt": "?", "solution": "1"}])
    with pytest.raises(InputFileError, match=r"bad\.jsonl:1: expected fields"):
        load_problems(str(bad), None)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputFileError, match="no problems") as empty:
        load_problems(str(tmp_path / "empty.jsonl"), None)
    assert empty.value.exit_code == ExitCode.EMPTY_INPUT
    with pytest.raises(UsageError):
        load_problems(str(bad), -1)
    bad.write_text('{"id": "x\\ud800", "question": "1?", "answer": "1"}\n')  # loads, but no file could hold it
    with pytest.raises(InputFileError, match=r"bad\.jsonl:1: a .* escape that is not half of a pair") as lone:
        load_problems(str(bad), None)
    assert lone.value.exit_code == ExitCode.BAD_DATA


# The harness -------------------------------------------------------------------------------------


def problems(n: int) -> list[Problem]:
    return [Problem(id=f"p{i}", kind="gsm8k", prompt=f"{i} + 1?", answer=str(i + 1)) for i in range(n)]


class FakeSolver:
    """`good` answers right; `half` right on even problems; `boom` raises on p1. Records its calls."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.interrupt_at = interrupt_at

    def __call__(self, problem: Problem, strategy: str) -> Outcome:
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append((strategy, problem.id))
        number = int(problem.id[1:])
        if strategy == "boom" and number == 1:
            raise RuntimeError("model fell over")
        right = strategy == "good" or number % 2 == 0
        answer = problem.answer if right else "0"
        tokens = {"good": 300, "half": 100}.get(strategy, 10)
        return Outcome(answer, f"so \\boxed{{{answer}}}", tokens, 0.5, {"steps": 3})


def test_scores_and_intervals(tmp_path: Path) -> None:
    solver = FakeSolver()
    report = run_accuracy(problems(4), ["good", "half"], solver, tmp_path / "r.jsonl", progress=False)
    assert solver.calls[:2] == [("good", "p0"), ("half", "p0")]  # problems outer, strategies inner
    good, half = report.score("good"), report.score("half")
    assert (good.n, good.correct, good.accuracy, good.mean_tokens, good.mean_seconds) == (4, 4, 1.0, 300, 0.5)
    assert (half.n, half.correct, half.accuracy, half.mean_tokens) == (4, 2, 0.5, 100)
    assert (half.ci_low, half.ci_high) == pytest.approx(wilson_interval(2, 4))
    assert report.problems == 4 and report.pending == 0 and not report.interrupted


def test_wilson_interval() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0


def test_resume_skips_done_work_and_extends(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    first = FakeSolver()
    run_accuracy(problems(3), ["good", "half"], first, results, progress=False)
    assert len(first.calls) == 6
    again = FakeSolver()
    report = run_accuracy(problems(3), ["good", "half"], again, results, progress=False)
    assert again.calls == []
    assert report.score("half").correct == 2
    more = FakeSolver()
    report = run_accuracy(problems(5), ["good", "half"], more, results, progress=False)
    assert more.calls == [("good", "p3"), ("half", "p3"), ("good", "p4"), ("half", "p4")]
    assert report.score("good").n == 5
    assert len(results.read_text().splitlines()) == 10


def test_a_torn_last_line_is_redone(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    run_accuracy(problems(2), ["good"], FakeSolver(), results, progress=False)
    lines = results.read_text().splitlines(keepends=True)
    results.write_text(lines[0] + lines[1][:25])  # a crash mid-write
    solver = FakeSolver()
    report = run_accuracy(problems(2), ["good"], solver, results, progress=False)
    assert solver.calls == [("good", "p1")]
    assert report.score("good").correct == 2
    assert [json.loads(line)["problem_id"] for line in results.read_text().splitlines()] == ["p0", "p1"]


def test_a_bad_line_inside_the_results_is_an_error(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text("not json\n")
    with pytest.raises(InputFileError, match=r"r\.jsonl:1"):
        run_accuracy(problems(1), ["good"], FakeSolver(), results, progress=False)


def test_a_raising_solve_is_recorded_as_wrong(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    report = run_accuracy(problems(3), ["boom"], FakeSolver(), results, progress=False)
    boom = report.score("boom")
    assert (boom.n, boom.correct, boom.errors) == (3, 2, 1)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    failed = next(r for r in records if r["problem_id"] == "p1")
    assert failed["correct"] is False and failed["error"] == "RuntimeError: model fell over"
    ok = next(r for r in records if r["problem_id"] == "p0")
    assert ok["final_answer"] == "1" and ok["extra"] == {"steps": 3} and ok["reference"] == "1"
    assert ok["generated_tokens"] == 10 and ok["text"] == "so \\boxed{1}"


def test_retry_errors_runs_only_the_failed_runs_again_and_the_new_record_wins(tmp_path: Path) -> None:
    from qwq_local.bench.compare import read_runs

    results = tmp_path / "r.jsonl"
    run_accuracy(problems(3), ["boom", "good"], FakeSolver(), results, progress=False)
    again = FakeSolver()
    run_accuracy(problems(3), ["boom", "good"], again, results, progress=False)
    assert again.calls == []  # a plain resume keeps the error

    calls: list[tuple[str, str]] = []

    def mended(problem: Problem, strategy: str) -> Outcome:
        calls.append((strategy, problem.id))
        return Outcome(problem.answer, f"so \\boxed{{{problem.answer}}}", 7, 0.1, {})

    report = run_accuracy(problems(3), ["boom", "good"], mended, results, progress=False, retry_errors=True)
    assert calls == [("boom", "p1")]
    boom = report.score("boom")
    assert (boom.n, boom.correct, boom.errors) == (3, 3, 0)
    assert len(results.read_text().splitlines()) == 7  # appended, nothing rewritten
    assert read_runs([results])["boom"]["p1"].right  # every reader takes the later record
    report = run_accuracy(problems(3), ["boom"], mended, results, progress=False, retry_errors=True)
    assert report.score("boom").errors == 0 and calls == [("boom", "p1")]  # nothing failed: nothing runs again


class FakePairs:
    """Solves a pair in one call: `sc@N` answers right; `bon@N` right on even problems, raising on p1 if `bon_fails`."""

    def __init__(self, bon_fails: bool = False) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.bon_fails = bon_fails

    def __call__(self, problem: Problem, strategy: str, partner: str) -> tuple[Outcome | Exception, Outcome | Exception]:
        self.calls.append((problem.id, strategy, partner))
        number = int(problem.id[1:])
        got: dict[str, Outcome | Exception] = {}
        for name in (strategy, partner):
            if name.startswith("bon") and self.bon_fails and number == 1:
                got[name] = RuntimeError("scorer fell over")
            else:
                answer = problem.answer if name.startswith("sc") or number % 2 == 0 else "0"
                got[name] = Outcome(answer, f"\\boxed{{{answer}}}", 80, 2.0, {"n": name})
        return got[strategy], got[partner]


PAIRS = {"sc@4": "bon@4", "bon@4": "sc@4", "sc@8": "bon@8", "bon@8": "sc@8"}


def test_paired_strategies_share_one_run_whatever_their_order(tmp_path: Path) -> None:
    pairs, single = FakePairs(), FakeSolver()
    solve = PairedSolve(PAIRS, pairs, single)
    report = run_accuracy(problems(2), ["sc@4", "sc@8", "good", "bon@4", "bon@8"], solve, progress=False)
    assert pairs.calls == [("p0", "sc@4", "bon@4"), ("p0", "sc@8", "bon@8"),
                           ("p1", "sc@4", "bon@4"), ("p1", "sc@8", "bon@8")]
    assert single.calls == [("good", "p0"), ("good", "p1")]
    assert [report.score(s).correct for s in ("sc@4", "bon@4", "sc@8", "bon@8")] == [2, 1, 2, 1]
    # Resumed with one half already recorded: the other half runs alone (its draws are not the recorded half's),
    # and the recorded half is not written again; a pair with neither half recorded is still pooled.
    results = write_jsonl(tmp_path / "r.jsonl", [])
    run_accuracy(problems(1), ["sc@4"], PairedSolve(PAIRS, FakePairs(), single), results, progress=False)
    again, alone = FakePairs(), FakeSolver()
    run_accuracy(problems(2), ["sc@4", "bon@4"], PairedSolve(PAIRS, again, alone), results, progress=False)
    assert alone.calls == [("bon@4", "p0")] and again.calls == [("p1", "sc@4", "bon@4")]
    assert [(r["strategy"], r["problem_id"]) for r in map(json.loads, results.read_text().splitlines())] == [
        ("sc@4", "p0"), ("bon@4", "p0"), ("sc@4", "p1"), ("bon@4", "p1")]


def test_a_failing_half_fails_only_its_own_strategy(tmp_path: Path) -> None:
    pairs = FakePairs(bon_fails=True)
    report = run_accuracy(problems(3), ["sc@4", "bon@4"], PairedSolve(PAIRS, pairs, FakeSolver()), progress=False)
    assert len(pairs.calls) == 3  # the failure was kept for bon's turn, not solved again
    assert (report.score("sc@4").correct, report.score("sc@4").errors) == (3, 0)
    assert (report.score("bon@4").correct, report.score("bon@4").errors) == (2, 1)


def test_ctrl_c_stops_cleanly_and_compares_like_with_like(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    report = run_accuracy(problems(4), ["good", "half"], FakeSolver(interrupt_at=3), results, progress=False)
    assert report.interrupted and report.pending == 5
    assert report.problems == 1 and report.score("good").n == report.score("half").n == 1
    assert len([json.loads(line) for line in results.read_text().splitlines()]) == 3
    assert "interrupted: 5 runs not done" in format_table(report)
    solver = FakeSolver()
    report = run_accuracy(problems(4), ["good", "half"], solver, results, progress=False)
    assert len(solver.calls) == 5 and report.problems == 4 and not report.interrupted


def test_no_results_file_and_a_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_accuracy(problems(2), ["good"], FakeSolver(), None, progress=True)
    assert report.score("good").correct == 2 and report.results_path is None
    assert "good 2/2" in capsys.readouterr().err


def test_duplicate_names_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="appears twice"):
        run_accuracy(problems(1), ["good", "good"], FakeSolver(), None, progress=False)
    with pytest.raises(UsageError, match="appears twice"):
        run_accuracy(problems(1) * 2, ["good"], FakeSolver(), None, progress=False)
    with pytest.raises(UsageError):
        run_accuracy(problems(1), [], FakeSolver(), None, progress=False)


def test_table_and_json_shape() -> None:
    report = run_accuracy(problems(4), ["good", "half"], FakeSolver(), None, progress=False)
    table = format_table(report).splitlines()
    assert table[0].split() == ["strategy", "n", "correct", "accuracy", "95%", "CI", "tokens/problem", "s/problem",
                                "errors", "reached"]
    assert set(table[1]) <= {"-", " "}
    assert table[2].split()[:4] == ["good", "4", "4", "100.0%"]
    assert table[3].split()[:4] == ["half", "4", "2", "50.0%"]
    assert len(table) == 4
    data = json.loads(report.to_json())
    assert set(data) == {"scores", "problems", "pending", "interrupted", "results_path"}
    assert set(data["scores"][0]) == {
        "strategy", "n", "correct", "accuracy", "ci_low", "ci_high", "mean_tokens", "mean_seconds", "errors", "reached",
    }
    assert data["scores"][1]["accuracy"] == 0.5


class SamplingSolver:
    """Sampling strategies keep their samples' answers: the right one among them on p0 and p1, picked only on p0."""

    def __call__(self, problem: Problem, strategy: str) -> Outcome:
        number = int(problem.id[1:])
        answers = {0: [problem.answer, "0"], 1: ["0", "x", None, problem.answer]}.get(number, ["0", "0"])
        final = problem.answer if number == 0 else "0"
        extra = {"terminal_answers": answers} if strategy != "direct" else {}
        return Outcome(final, f"\\boxed{{{final}}}", 10, 0.1, extra)


def test_reached_counts_right_answers_among_the_finished_ones() -> None:
    report = run_accuracy(problems(3), ["sc", "direct"], SamplingSolver(), None, progress=False)
    sc, direct = report.score("sc"), report.score("direct")
    assert (sc.correct, sc.reached) == (1, 2)
    assert (direct.correct, direct.reached) == (1, None)  # it keeps no answers: nothing to count
    table = format_table(report).splitlines()
    assert table[2].split()[-1] == "2" and table[3].split()[-1] == "-" and table[-1].startswith("(reached:")

    def fails(problem: Problem, text: str, answer: str | None) -> bool:
        if text == "":
            raise ValueError("cannot parse")
        return True

    report = run_accuracy(problems(3), ["sc"], SamplingSolver(), None, progress=False, checker=fails)
    assert report.score("sc").reached == 0  # an answer the checker fails on is not right


def test_reached_checks_each_answer_once() -> None:
    calls: list[tuple[str, str | None]] = []

    def counting(problem: Problem, text: str, answer: str | None) -> bool:
        if text == "":  # a bare answer, as `reached` checks them
            calls.append((problem.id, answer))
        return check(problem, text, answer)

    run_accuracy(problems(3), ["sc", "bon"], SamplingSolver(), None, progress=False, checker=counting)
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 5  # p0 1 (right first), p1 3, p2 1 ("0" twice)


def test_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from qwq_local.bench.plot import plot_accuracy

    report = run_accuracy(problems(4), ["good", "half"], FakeSolver(), None, progress=False)
    path = plot_accuracy(report, tmp_path / "plots" / "accuracy.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = AccuracyReport(scores=(), problems=0, pending=0)
    assert plot_accuracy(empty, tmp_path / "empty.png").stat().st_size > 0


# The real data, where shared/data is present ------------------------------------------------------


def test_reference_answers_pass_their_own_checks() -> None:
    """The first 20 problems of each set: the reference answer (MBPP: solution, in the sandbox) checks out."""
    data_dir = default_data_dir()
    if data_dir is None or not all((data_dir / name).exists() for name in DATA_FILES.values()):
        pytest.skip("shared/data is not here")
    for name in DATA_FILES:
        for problem in load_problems(name, 20, data_dir=data_dir):
            if problem.kind == "mbpp":
                reply = f"<think>\n...\n</think>\n```python\n{problem.answer}\n```"
            else:
                reply = f"<think>\n...\n</think>\nThe answer is $\\boxed{{{problem.answer}}}$."
            assert check(problem, reply, None), (name, problem.id, problem.answer)


def test_runs_of_another_setup_are_not_resumed(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "r.jsonl", [])
    setups = {"good": {"model": "a", "K": 4}}
    run_accuracy(problems(1), ["good"], FakeSolver(), results, progress=False, setups=setups)
    assert json.loads(results.read_text())["setup"] == {"model": "a", "K": 4}
    with pytest.raises(UsageError, match="holds good runs made with model 'a' \\(this run: 'b'\\)"):
        run_accuracy(problems(2), ["good"], FakeSolver(), results, progress=False,
                     setups={"good": {"model": "b", "K": 4}})
    solver = FakeSolver()  # the same setup resumes; a record without a setup (hand-written) is not trusted
    with results.open("a") as handle:
        handle.write(json.dumps({"strategy": "good", "problem_id": "p1", "correct": True, "generated_tokens": 1,
                                 "seconds": 1.0, "error": None, "extra": {}}) + "\n")
    report = run_accuracy(problems(3), ["good"], solver, results, progress=False, setups=setups)
    assert solver.calls == [("good", "p1"), ("good", "p2")] and report.problems == 3
    # A setting the records do not name (added later, like the head) passes; one they name must agree.
    with_head = {"good": {"model": "a", "K": 4, "head": "h1"}, "other": {"model": "z"}}
    run_accuracy(problems(4), ["good", "other"], FakeSolver(), results, progress=False, setups=with_head)
    with pytest.raises(UsageError, match="head 'h1' \\(this run: 'h2'\\)"):
        run_accuracy(problems(5), ["good"], FakeSolver(), results, progress=False,
                     setups={"good": {"model": "a", "K": 4, "head": "h2"}})
    with pytest.raises(UsageError, match="ctx 32768 \\(this run: 16384\\): .* or --ctx 32768 to go on with them"):
        sized = tmp_path / "sized.jsonl"  # a context sized to free memory differs: the way on is said
        run_accuracy(problems(1), ["good"], FakeSolver(), sized, progress=False, setups={"good": {"ctx": 32768}})
        run_accuracy(problems(1), ["good"], FakeSolver(), sized, progress=False, setups={"good": {"ctx": 16384}})
    # Only the strategies of this run are checked: "other" was made with model z.
    solver = FakeSolver()
    run_accuracy(problems(5), ["good"], solver, results, progress=False, setups={"good": with_head["good"]})
    assert solver.calls == [("good", "p4")]


