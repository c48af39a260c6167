"""`qwq bench accuracy` end to end on the real tiny model, and its strategy specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwq_local.bench.accuracy_run import StrategySpec, pair_replies, parse_strategy
from qwq_local.cli import main
from qwq_local.errors import ExitCode, UsageError


def test_strategy_specs() -> None:
    assert parse_strategy("direct") == StrategySpec("direct", "direct", None, None)
    assert parse_strategy("sc@8") == StrategySpec("sc@8", "sc", 8, None)
    assert parse_strategy("astar:qhead+rules") == StrategySpec("astar:qhead+rules", "astar", None,
                                                                ("qhead", "rules"))
    assert parse_strategy(" bon@4:self-eval ").scorers == ("self-eval",)
    for bad in ("dfs", "sc:rules", "direct@3", "astar:magic", "bon@0", "astar@"):
        with pytest.raises(UsageError):
            parse_strategy(bad)


def test_sc_and_bon_with_the_same_n_are_paired() -> None:
    specs = [parse_strategy(s) for s in ("sc@4", "bon@8", "bon@4:rules", "bon@4", "sc@8", "sc@2", "astar@4")]
    assert pair_replies(specs) == {"sc@4": "bon@4:rules", "bon@4:rules": "sc@4", "sc@8": "bon@8", "bon@8": "sc@8"}
    assert pair_replies([parse_strategy("sc"), parse_strategy("bon")]) == {"sc": "bon", "bon": "sc"}


@pytest.mark.model
def test_bench_accuracy_runs_resumes_and_plots(tmp_path: Path, qwen_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "easy.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"p{i}", "question": q, "answer": a}) for i, (q, a) in
                              enumerate([("What is 2 + 3?", "#### 5"), ("What is 10 - 4?", "#### 6")])) + "\n")
    results, plot = tmp_path / "runs.jsonl", tmp_path / "acc.png"
    args = ["bench", "accuracy", "--data", str(data), "--strategy", "direct,sc@2,bon@2:rules,astar:rules", "--model",
            str(qwen_path), "--max-tokens", "120", "--ctx", "2048", "--candidates", "2", "--trajectories", "1",
            "--max-expansions", "3", "--results", str(results), "--plot", str(plot), "--json"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == 2 and report["pending"] == 0
    by_name = {s["strategy"]: s for s in report["scores"]}
    assert set(by_name) == {"direct", "sc@2", "bon@2:rules", "astar:rules"}
    assert by_name["direct"]["correct"] >= 1  # the 0.5B model adds small numbers
    assert all(s["mean_tokens"] > 0 and s["errors"] == 0 for s in by_name.values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = results.read_text().splitlines()
    assert len(runs) == 8
    records = {(r["strategy"], r["problem_id"]): r for r in map(json.loads, runs)}
    for pid in ("p0", "p1"):  # sc@2 and bon@2 chose from the same two replies, sampled once
        sc, bon = records[("sc@2", pid)], records[("bon@2:rules", pid)]
        assert sc["extra"]["pooled_with"] == "bon@2:rules" and bon["extra"]["pooled_with"] == "sc@2"
        assert sc["extra"]["terminal_answers"] == bon["extra"]["terminal_answers"]
        assert sc["generated_tokens"] == bon["generated_tokens"]
        astar_extra = records[("astar:rules", pid)]["extra"]  # each finished path's value, for choosers offline
        assert len(astar_extra["terminal_values"]) == len(astar_extra["terminal_answers"])
        assert all(0.0 <= v <= 1.0 for v in astar_extra["terminal_values"])
    with pytest.raises(SystemExit):  # a rerun finds every run done and loads nothing new
        main(args)
    assert json.loads(capsys.readouterr().out)["scores"] == report["scores"]
    assert results.read_text().splitlines() == runs
    failed = {**records[("direct", "p0")], "correct": False, "error": "KVBudgetError: full", "final_answer": None}
    with results.open("a") as handle:  # a run that failed (the later record wins), then --retry-errors
        handle.write(json.dumps(failed) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(args + ["--retry-errors"])
    assert exc.value.code == 0
    retried = {s["strategy"]: s for s in json.loads(capsys.readouterr().out)["scores"]}
    assert retried["direct"]["errors"] == 0 and retried["direct"]["n"] == 2
    again = results.read_text().splitlines()
    assert len(again) == len(runs) + 2 and json.loads(again[-1])["problem_id"] == "p0"  # only that run, appended
    setup = records[("direct", "p0")]["setup"]
    assert setup["model"] == qwen_path.name and setup["max_tokens"] == 120 and setup["candidates"] == 2
    assert "scorers" not in setup and records[("astar:rules", "p0")]["setup"]["scorers"] == "rules"
    assert "head" not in records[("astar:rules", "p0")]["setup"]  # a model given by path has no catalog head
    with pytest.raises(SystemExit) as exc:  # other settings do not resume these runs
        main([a if a != "120" else "100" for a in args])
    assert exc.value.code == ExitCode.USAGE and "max_tokens 120 (this run: 100)" in capsys.readouterr().err
    later = tmp_path / "later.jsonl"  # --offset: the problems after the first N
    with pytest.raises(SystemExit) as exc:
        main(args[:5] + ["direct", *args[6:args.index("--results")], "--results", str(later), "--offset", "1",
                         "--limit", "1", "--json"])
    assert exc.value.code == 0 and json.loads(capsys.readouterr().out)["problems"] == 1
    assert [json.loads(line)["problem_id"] for line in later.read_text().splitlines()] == ["p1"]


def test_bench_accuracy_bad_strategy_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "accuracy", "--strategy", "direct,dfs"])
    assert exc.value.code == ExitCode.USAGE and "bad strategy" in capsys.readouterr().err


def test_bench_accuracy_offset_past_the_data_is_usage(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from qwq_local.app import runtime

    monkeypatch.setattr(runtime, "locate", lambda *a, **k: pytest.fail("got as far as the model"))
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "question": "1 + 1?", "answer": "#### 2"}) + "\n"
                            for i in range(2)))
    for extra, said in ((["--offset", "2"], "no problems after the first 2"), (["--offset", "-1"], "--offset must")):
        with pytest.raises(SystemExit) as exc:
            main(["bench", "accuracy", "--data", str(data), "--strategy", "direct", *extra])
        assert exc.value.code == ExitCode.USAGE and said in capsys.readouterr().err


def test_bench_accuracy_checks_the_plot_before_it_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from qwq_local.app import runtime

    monkeypatch.setattr(runtime, "locate", lambda *a, **k: pytest.fail("got as far as the model"))
    with pytest.raises(SystemExit) as exc:
        main(["bench", "accuracy", "--strategy", "direct", "--plot", str(tmp_path)])
    assert exc.value.code == ExitCode.USAGE and "a directory, not a .png file" in capsys.readouterr().err
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    with pytest.raises(SystemExit) as exc:
        main(["bench", "accuracy", "--strategy", "direct", "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert exc.value.code == ExitCode.MISSING_DEPENDENCY and "--plot needs matplotlib" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.model
def test_bench_records_keep_the_head_that_scored_them(tmp_path: Path, qwen_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from qwq_local.value.qhead import QHeadMeta, QHeadWeights, write_head

    def head(name: str, seed: int) -> Path:
        w = np.random.default_rng(seed).normal(size=896)
        meta = QHeadMeta(architecture="qwen2", n_embd=896, model_sha256="", step_delimiter="\n\n",
                         training_data="test", n_problems=1, n_states=2, metrics={},
                         created="2026-11-24T00:00:00+00:00")
        return write_head(tmp_path / name, QHeadWeights(mean=np.zeros(896), std=np.ones(896), w=w, b=[0.0]), meta)

    data = tmp_path / "easy.jsonl"
    data.write_text(json.dumps({"id": "p0", "question": "What is 2 + 3?", "answer": "#### 5"}) + "\n")
    results = tmp_path / "runs.jsonl"
    args = ["bench", "accuracy", "--data", str(data), "--model", str(qwen_path), "--max-tokens", "24", "--ctx", "2048",
            "--results", str(results), "--json", "--head"]
    with pytest.raises(SystemExit) as exc:
        main(args + [str(head("h1.gguf", 1)), "--strategy", "direct,bon@2"])
    assert exc.value.code == 0, capsys.readouterr().err
    records = {r["strategy"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert records["bon@2"]["setup"]["scorers"] == "qhead" and records["bon@2"]["setup"]["head"].startswith(
        "h1.gguf sha256:")
    assert "head" not in records["direct"]["setup"] and "scorers" not in records["direct"]["setup"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # scored by another head: not resumed as if it were this one's
        main(args + [str(head("h2.gguf", 2)), "--strategy", "direct,bon@2"])
    err = capsys.readouterr().err
    assert exc.value.code == ExitCode.USAGE and "holds bon@2 runs made with head 'h1.gguf sha256:" in err
    with pytest.raises(SystemExit) as exc:  # a run the head does not score is the same run with either
        main(args + [str(tmp_path / "h2.gguf"), "--strategy", "direct"])
    assert exc.value.code == 0 and len(results.read_text().splitlines()) == 2


def test_a_run_cut_short_by_ctrl_c_is_never_recorded() -> None:
    from qwq_local.app.solve import SolveResult
    from qwq_local.bench.accuracy_run import _outcome

    def result(stop: str) -> SolveResult:
        return SolveResult(model="m", strategy="sc", format="math", answer="\\boxed{5}", final_answer="5",
                           thinking="", prompt_tokens=1, thinking_tokens=0, answer_tokens=3, seconds=1.0,
                           decode_seconds=1.0, stop_reason=stop)

    assert _outcome(result("done")).final_answer == "5"
    with pytest.raises(KeyboardInterrupt):  # run_accuracy stops there, and a rerun does the problem again
        _outcome(result("interrupted"))
