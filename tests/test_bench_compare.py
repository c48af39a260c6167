"""`qwq bench compare`: results files side by side, paired sign tests, finished paths chosen again offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qwq_local.bench.compare import add_rechosen, compare, read_runs, rechoose
from qwq_local.cli import main
from qwq_local.errors import ExitCode, UsageError


def line(strategy: str, pid: str, correct: bool, tokens: int, **extra: Any) -> str:
    record = {"strategy": strategy, "problem_id": pid, "kind": "gsm8k", "reference": "18", "correct": correct,
              "generated_tokens": tokens, "extra": extra}
    return json.dumps(record) + "\n"


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(lines))
    return path


def test_choosers_pick_by_vote_by_odds_and_by_the_top_value() -> None:
    answers, values = ["18", "18", "2", "18.0", None], [0.5, 0.5, 0.97, 0.5, 0.99]
    assert rechoose(answers, values, "vote") == "18"  # three of four, "18.0" counted with "18"
    assert rechoose(answers, values, "value") == "2"  # odds 32 against 1 + 1 + 1
    assert rechoose(answers, values, "value^0.25") == "18"  # 32 ** 0.25 = 2.4 against 3
    assert rechoose(answers, values, "top") == "2"  # the unanswered path is never chosen
    assert rechoose([None], [0.9], "vote") is None
    for bad in ("median", "vote^2", "value^x", "value^-1", "value^nan"):
        with pytest.raises(UsageError):
            rechoose(answers, values, bad)


def test_strategies_of_two_files_on_shared_problems_with_rechosen_searches(tmp_path: Path) -> None:
    base = write(tmp_path / "base.jsonl", line("sc@8", "a", True, 2000), line("sc@8", "b", False, 2200),
                 line("sc@8", "c", True, 2100), line("direct", "a", False, 300), line("direct", "b", False, 280))
    search = write(tmp_path / "astar.jsonl",
                   line("astar", "a", False, 1700, terminal_answers=["18", "18", "2"], terminal_values=[0.5, 0.5, 0.99]),
                   line("astar", "b", True, 1600, terminal_answers=["18"], terminal_values=[0.7]),
                   line("astar", "c", True, 2500, terminal_answers=[], terminal_values=[]))
    runs = add_rechosen(read_runs([base, search]), ["vote", "top"])
    assert runs["astar/vote"]["a"].right and not runs["astar/top"]["a"].right  # "2" is wrong, the vote's "18" right
    assert runs["astar/vote"]["c"].right  # no path finished: the search's own answer (from its best open path)
    assert "sc@8/vote" not in runs  # its records keep no values
    shares = write(tmp_path / "sc.jsonl", line("sc@8", "a", True, 2000, terminal_answers=["18"], terminal_values=[1.0]))
    assert set(add_rechosen(read_runs([shares]), ["vote"])) == {"sc@8"}  # vote shares are not path values
    assert compare(runs, ["astar", "sc@8"], []).problems == 3
    report = compare(runs, ["astar", "astar/vote", "sc@8", "direct"], ["sc@8"])
    assert report.problems == 2  # c has no direct run
    rows = {r.strategy: r for r in report.rows}
    assert (rows["astar"].right, rows["astar/vote"].right, rows["sc@8"].right) == (1, 2, 1)
    assert rows["astar"].mean_tokens == 1650 and rows["sc@8"].mean_tokens == 2100
    pairs = {(p.strategy, p.other): (p.wins, p.losses) for p in report.pairs}
    assert pairs == {("astar", "sc@8"): (1, 1), ("astar/vote", "sc@8"): (1, 0), ("direct", "sc@8"): (0, 1)}
    with pytest.raises(UsageError, match="no runs of bon@8"):
        compare(runs, ["bon@8"], [])


def test_a_strategy_in_two_files_is_named_by_its_file_and_bad_lines_are_refused(tmp_path: Path) -> None:
    one = write(tmp_path / "one.jsonl", line("sc@8", "a", True, 10))
    two = write(tmp_path / "two.jsonl", line("sc@8", "a", False, 20))
    assert set(read_runs([one, two])) == {"sc@8", "sc@8@two"}
    write(two, "{not json\n")
    with pytest.raises(Exception, match="two.jsonl:1: not an accuracy results line"):
        read_runs([two])
    write(two, line("sc@8", "a", False, 20), '{"strategy": "sc@8", "problem_id": "b", "cor')  # being written
    assert set(read_runs([two])["sc@8"]) == {"a"}
    assert two.read_text().endswith('"cor')  # a reader never touches the file


def test_the_command_prints_the_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = write(tmp_path / "runs.jsonl", line("sc@8", "a", True, 2000), line("sc@8", "b", False, 2000),
                 line("astar", "a", True, 1500, terminal_answers=["18", "3"], terminal_values=[0.6, 0.9]),
                 line("astar", "b", True, 1500, terminal_answers=["18"], terminal_values=[0.6]))
    with pytest.raises(SystemExit) as exc:
        main(["bench", "compare", str(runs), "--rechoose", "vote,value^0.5", "--against", "sc@8", "--json"])
    assert exc.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == 2
    assert {r["strategy"]: r["right"] for r in report["rows"]} == {"astar": 2, "astar/value^0.5": 1,
                                                                  "astar/vote": 2, "sc@8": 1}  # 9 ** 0.5 > 1.5 ** 0.5
    with pytest.raises(SystemExit) as exc:
        main(["bench", "compare", str(runs), "-s", "astar,sc@8"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "2 problems shared" in out and "+1/-0" in out
    with pytest.raises(SystemExit) as exc:
        main(["bench", "compare", str(runs), "--rechoose", "median"])
    assert exc.value.code == ExitCode.USAGE and "--rechoose 'median'" in capsys.readouterr().err


def test_finished_paths_are_judged_for_reach_and_for_how_their_values_separate_right_from_wrong(
        tmp_path: Path) -> None:
    runs = read_runs([write(
        tmp_path / "runs.jsonl",
        # a: mixed; the right paths outvalue the wrong answer but not the unanswered path (AUC 1/2); answered right
        line("astar", "a", True, 900, terminal_answers=["18", "18.0", "3", None],
             terminal_values=[0.9, 0.8, 0.2, 0.99]),
        # b: mixed, the wrong path on top (AUC 0); the answer wrong although a right path was there
        line("astar", "b", False, 900, terminal_answers=["18", "4"], terminal_values=[0.3, 0.6]),
        # c: no right path
        line("astar", "c", False, 900, terminal_answers=["5", "5"], terminal_values=[0.5, 0.5]),
        line("sc@8", "a", True, 2000, terminal_answers=["18", "7"], terminal_values=[0.5, 0.5]),
        line("sc@8", "b", False, 2000, terminal_answers=["7"], terminal_values=[1.0]),
        line("sc@8", "c", False, 2000, terminal_answers=["18"], terminal_values=[1.0]),
        line("direct", "a", True, 300), line("direct", "b", False, 300), line("direct", "c", False, 300))])
    report = compare(runs, ["astar", "sc@8", "direct"], [])
    paths = {p.strategy: p for p in report.paths}
    assert set(paths) == {"astar", "sc@8"}  # direct keeps no paths
    astar = paths["astar"]
    assert (astar.paths, astar.reached, astar.chosen, astar.mixed) == (8, 2, 1, 2)
    assert astar.auc == pytest.approx((1 / 2 + 0) / 2)  # the unanswered path counts as wrong
    assert astar.top_right == pytest.approx(0.0)  # the unanswered path's 0.99 tops a; b's top is wrong
    assert astar.random_right == pytest.approx((2 / 4 + 1 / 2) / 2)
    sc = paths["sc@8"]  # vote shares are not path values: reach only
    assert (sc.paths, sc.reached, sc.chosen, sc.auc) == (4, 2, 1, None)


def test_complete_lines_of_a_file_being_appended(tmp_path: Path) -> None:
    from qwq_local.jsonl import complete_lines

    path = tmp_path / "runs.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}')  # whole, only its newline missing
    assert complete_lines(path) == [b'{"a": 1}', b'{"b": 2}'] and path.read_bytes().endswith(b"2}")
    assert complete_lines(path, repair=True) == [b'{"a": 1}', b'{"b": 2}'] and path.read_bytes().endswith(b"}\n")
    path.write_bytes(b'{"a": 1}\n{"b": ')  # torn
    assert complete_lines(path) == [b'{"a": 1}'] and path.read_bytes().endswith(b": ")
    assert complete_lines(path, repair=True) == [b'{"a": 1}'] and path.read_bytes() == b'{"a": 1}\n'
    path.write_bytes(b'{"a": 1}\nnot json\n{"b": 2}\n')  # damage in the middle is the reader's to refuse
    assert complete_lines(path, repair=True) == [b'{"a": 1}', b"not json", b'{"b": 2}']
