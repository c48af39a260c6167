"""The search bank (`qwq bench bank`) and the choosers judged on it (`qwq bench choose`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from qwq_local.bench.bank import leaves, lowest_window, parse_shape, path, sample_tree, summarize
from qwq_local.bench.bank_run import bank_record, save_arrays
from qwq_local.value.bank_labels import read_bank
from qwq_local.bench.choose import (
    Leaf,
    Scales,
    bank_scales,
    evaluate,
    from_records,
    make_chooser,
    sign_test,
    signal_report,
    subset_tokens,
    weighted_vote,
)
from qwq_local.errors import UsageError
from qwq_local.problems.datasets import Problem
from qwq_local.search.protocol import StepStop
from tests.fakes import ScriptedLM

STOP = StepStop()
REPLY = StepStop(delimiter=None, min_tokens=0, max_tokens=512)


def two_two_two() -> ScriptedLM:
    """A tree of shape 2,2,2 in which the second first step finishes the reply at once."""
    return ScriptedLM({
        (): ["A\n\n", ("B \\boxed{3}", True)],
        ("A\n\n",): ["A1\n\n", "A2\n\n"],
        ("A\n\n", "A1\n\n"): [("so \\boxed{5}", True), ("so \\boxed{6}", True)],
        ("A\n\n", "A2\n\n"): [("so \\boxed{5}", True), ("so \\boxed{5}", True)],
    })


def test_sample_tree_branches_early_completes_last_and_releases_everything() -> None:
    lm = two_two_two()
    nodes = sample_tree("q", lm, (2, 2, 2), STOP, REPLY)
    assert [n.depth for n in nodes] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert [c.stop.delimiter for c in lm.sample_calls] == ["\n\n", "\n\n", None, None]
    assert [c.k for c in lm.sample_calls] == [2, 2, 2, 2]
    ends = leaves(nodes)
    assert [n.text for n in ends] == ["B \\boxed{3}", "so \\boxed{5}", "so \\boxed{6}", "so \\boxed{5}", "so \\boxed{5}"]
    assert "".join(n.text for n in path(nodes, ends[2])) == "A\n\nA1\n\nso \\boxed{6}"
    assert lm.live == set()


def test_bank_record_labels_every_leaf_and_keeps_the_tree() -> None:
    nodes = sample_tree("q", two_two_two(), (2, 2, 2), STOP, REPLY)
    problem = Problem("p1", "gsm8k", "q", "5")
    record = bank_record(problem, nodes, (2, 2, 2), {"model": "m"}, 20, 30, 1.5, None)
    assert [(leaf["answer"], leaf["correct"]) for leaf in record["leaves"]] == [
        ("3", False), ("5", True), ("6", False), ("5", True), ("5", True)]
    assert [n["parent"] for n in record["nodes"]] == [None, None, 0, 0, 2, 2, 3, 3]
    assert record["leaves"][1]["tokens"] == 1 + 1 + 2  # whitespace tokens of its path, prefix included
    json.dumps(record)


def test_statistics_of_a_run_of_tokens() -> None:
    conf = np.array([5.0] * 40 + [1.0] * 32 + [4.0] * 8, dtype=np.float32)
    table = np.stack([np.full(80, -0.5), conf, np.full(80, 0.25), np.full(80, 3.0)], axis=1).astype(np.float32)
    stats = summarize(table, window=32)
    assert stats["mean_logprob"] == pytest.approx(-0.5)
    assert stats["low_conf"] == pytest.approx(1.0)
    assert stats["tail_conf"] == pytest.approx((24 * 1.0 + 8 * 4.0) / 32)
    assert stats["neg_entropy"] == pytest.approx(-0.25) and stats["certainty"] == pytest.approx(3.0)
    assert lowest_window(np.array([2.0, 4.0]), 32) == pytest.approx(3.0)
    assert summarize(np.zeros((0, 4), dtype=np.float32))["mean_conf"] is None


def test_shapes_are_checked() -> None:
    assert parse_shape("2, 2,2") == (2, 2, 2)
    for bad in ("", "0,2", "2,x", "17"):
        with pytest.raises(ValueError):
            parse_shape(bad)


def test_arrays_and_a_torn_bank_line(tmp_path: Path) -> None:
    lm = two_two_two()
    lm.hidden = np.ones(4, dtype=np.float32)
    nodes = sample_tree("q", lm, (2, 2, 2), STOP, REPLY)
    save_arrays(tmp_path / "a" / "p1.npz", nodes)
    with np.load(tmp_path / "a" / "p1.npz") as arrays:
        assert arrays["hidden"].shape == (8, 4) and arrays["hidden"].dtype == np.float16
        assert arrays["offsets"][-1] == sum(n.n_tokens for n in nodes) == len(arrays["tokens"])
    bank = tmp_path / "bank.jsonl"
    line = json.dumps({"problem_id": "p1", "nodes": [{"id": 0, "parent": None, "depth": 0, "n_tokens": 3}],
                       "leaves": [{"node": 0, "answer": "5", "correct": True, "tokens": 3}]}) + "\n"
    bank.write_text(line + '{"problem_id": "p2", "lea')
    assert list(read_bank(bank)) == ["p1"]  # a reader skips the torn line (a writer may still be at it)
    assert bank.read_text().endswith('"lea')
    assert list(read_bank(bank, repair=True)) == ["p1"]  # the writer cuts it off before it appends
    assert bank.read_text() == line
    for bad in ({"problem_id": "p"}, {"problem_id": "p", "nodes": [], "leaves": [{"node": 0}]},
                {"problem_id": "p", "nodes": [{"id": 0, "parent": 7, "depth": 0, "n_tokens": 1}], "leaves": []},
                {"problem_id": "p", "nodes": [{"id": 0, "parent": 0, "depth": 1, "n_tokens": 1}], "leaves": []},
                {"problem_id": "p", "nodes": [{"id": 0, "parent": None, "depth": 0, "n_tokens": 1}] * 2, "leaves": []},
                {"problem_id": "p", "nodes": [{"id": 0, "parent": None, "depth": 0, "n_tokens": 1}],
                 "leaves": [{"node": 0, "answer": "5", "correct": 1, "tokens": 1}]},
                {"problem_id": "p", "nodes": [{"id": 0, "parent": None, "depth": 0, "n_tokens": 1}],
                 "leaves": [{"node": 0, "answer": 5, "correct": True, "tokens": 1}]}):
        bank.write_text(json.dumps(bad) + "\n")
        with pytest.raises(Exception, match="bank.jsonl:1: not a bank line"):
            read_bank(bank)


def leaf(answer: str | None, correct: bool, conf: float, node: int = 0) -> Leaf:
    return Leaf(answer, correct, {"conf": conf}, 10, node)


def test_choosers_vote_weigh_filter_and_pick() -> None:
    leaves_ = [leaf("7", False, 0.1, 1), leaf("7", False, 0.2, 2), leaf("9", True, 3.0, 3), leaf(None, False, 9.0, 4)]
    scales = Scales({"conf": 0.0}, {"conf": 1.0})  # z = the raw value
    assert make_chooser("vote")(leaves_, scales).answer == "7"
    assert make_chooser("wvote:conf")(leaves_, scales).answer == "9"  # e^3 outweighs e^0.1 + e^0.2
    assert make_chooser("wvote:conf^0.1")(leaves_, scales).answer == "7"  # e^.3 does not outweigh e^.01 + e^.02
    assert make_chooser("filter:conf@0.5")(leaves_, scales).answer == "9"  # the top two: None and 9
    assert make_chooser("top:conf")(leaves_, scales).answer is None  # the top leaf, even with no answer
    assert weighted_vote([leaf("1", True, 0), leaf("2", False, 0)], [1.0, 1.0]).answer == "1"  # ties: first seen
    for bad in ("vote:x", "top", "wvote:conf@0.5", "filter:conf@2", "rank:conf", "top:conf^2", "wvote:conf^x"):
        with pytest.raises(ValueError):
            make_chooser(bad)


def test_sign_test_is_the_exact_binomial() -> None:
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(7, 3) == pytest.approx(2 * (1 + 10 + 45 + 120) / 1024)


def record(pid: str, answers: list[tuple[str, bool, float]]) -> dict:
    nodes = [{"id": 0, "parent": None, "n_tokens": 5}] + [
        {"id": i + 1, "parent": 0, "n_tokens": 10} for i in range(len(answers))]
    return {"problem_id": pid, "generated_tokens": 5 + 10 * len(answers), "nodes": nodes,
            "leaves": [{"node": i + 1, "answer": a, "correct": c, "tokens": 15, "stats": {"conf": s}}
                       for i, (a, c, s) in enumerate(answers)]}


def test_evaluate_compares_with_the_vote_on_the_same_leaves() -> None:
    bank = [record("a", [("1", False, 0.0), ("1", False, 0.0), ("2", True, 5.0)]),
            record("b", [("3", True, 1.0), ("3", True, 1.0), ("4", False, 0.0)]),
            record("c", [("5", False, 0.0), ("5", False, 0.0), ("5", False, 0.0)])]
    problems = from_records(bank)
    reports, signals, summary = evaluate(problems, ["vote", "top:conf"], ["conf"])
    vote, top = reports
    assert (vote.correct, top.correct) == (1, 2) and (top.wins, top.losses) == (1, 0)
    assert vote.by_samples == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert top.tokens_by_samples == pytest.approx([15, 25, 35])
    assert summary["oracle"] == 2
    conf = signals[0]
    assert conf.mixed == 2 and conf.auc == pytest.approx(1.0) and conf.top_right == pytest.approx(1.0)
    assert conf.random_right == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert subset_tokens(problems[0], problems[0].leaves[:2]) == 25
    blind = signal_report(problems, "missing", bank_scales(problems))
    assert blind.auc is None and blind.mixed == 0


def test_leaves_are_spread_over_the_tree() -> None:
    nodes = [{"id": 0, "parent": None}, {"id": 1, "parent": None}, {"id": 2, "parent": 0}, {"id": 3, "parent": 0},
             {"id": 4, "parent": 1}, {"id": 5, "parent": 1}]
    rec = {"problem_id": "x", "nodes": [{**n, "n_tokens": 1} for n in nodes],
           "leaves": [{"node": n, "answer": str(n), "correct": False, "tokens": 2, "stats": {}} for n in (2, 3, 4, 5)]}
    (problem,) = from_records([rec])
    assert [lf.node for lf in problem.leaves] == [2, 4, 3, 5]  # first one leaf under each first step
    assert not math.isnan(problem.leaves[0].signals["short"])


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from qwq_local.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_bank_and_choose_run_on_the_tiny_model(tmp_path: Path, smollm_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QWQ_BANK_ARRAYS", str(tmp_path / "arrays"))
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "t1", "question": "What is 2+3?", "answer": "5"}) + "\n")
    out = tmp_path / "bank"
    args = ["bench", "bank", "--data", str(problems), "--results", str(out), "--shape", "2,2",
            "--max-tokens", "40", "--model", str(smollm_path)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    (line,) = (out / "bank.jsonl").read_text().splitlines()
    rec = json.loads(line)
    assert 2 <= len(rec["leaves"]) <= 4 and rec["generated_tokens"] > 0
    assert all(leaf["stats"]["mean_conf"] is not None for leaf in rec["leaves"])
    assert all(n["stats"]["mean_logprob"] <= 0 for n in rec["nodes"] if n["n_tokens"])
    npz = next((tmp_path / "arrays").rglob("t1.npz"))
    with np.load(npz) as arrays:
        assert arrays["hidden"].shape[0] == len(rec["nodes"]) and not np.isnan(arrays["hidden"][-1]).any()
        assert len(arrays["tokens"]) == sum(n["n_tokens"] for n in rec["nodes"])
        sampled = arrays["hidden"].astype(np.float32)
        sampled_mean = arrays["hidden_mean"].astype(np.float32)
        sampled_mid = arrays["hidden_mid_mean"].astype(np.float32)
        assert int(arrays["mid_layer"]) == 15  # SmolLM2-135M: 30 blocks
        assert arrays["hidden_mid"].shape == sampled.shape and np.isfinite(arrays["hidden_mid"]).all()
    assert sampled_mean.shape == sampled_mid.shape == sampled.shape and np.isfinite(sampled_mean).all()
    assert not np.allclose(sampled_mean, sampled, atol=0.05)  # a step's mean state, not its last one
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "1 of 1 problems done" in err
    assert len((out / "bank.jsonl").read_text().splitlines()) == 1
    # On another machine the user cache is empty: the same command rebuilds the hidden states from the texts.
    npz.unlink()
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "(1 to rebuild)" in err and "rebuilt 1/1" in err, err
    assert (out / "bank.jsonl").read_text() == line + "\n"  # the record is not sampled again
    with np.load(npz) as arrays:
        rebuilt = arrays["hidden"].astype(np.float32)
        rebuilt_mean = arrays["hidden_mean"].astype(np.float32)
        rebuilt_mid = arrays["hidden_mid_mean"].astype(np.float32)
        tokens = arrays["tokens"]
    assert rebuilt.shape == sampled.shape and np.isfinite(rebuilt).all()
    assert np.isnan(tokens.astype(np.float32)).all()  # sampling's statistics are not rebuilt
    for got, want in ((rebuilt, sampled), (rebuilt_mean, sampled_mean), (rebuilt_mid, sampled_mid)):
        cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert np.median(cosine) > 0.99, cosine  # the same states up to tokenization and batching (~0.9998)
    # Arrays from before the means and the middle layer were recorded: the replay adds them, keeps what was there.
    np.savez_compressed(npz, offsets=np.arange(3), tokens=np.ones((2, 4), np.float16), hidden=rebuilt[:2] * 0)
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "(1 to rebuild, 1 of them to add newer states to)" in err, err
    with np.load(npz) as arrays:
        assert (arrays["tokens"] == 1).all() and (arrays["hidden"] == 0).all()
        assert arrays["offsets"].tolist() == [0, 1, 2]
        assert np.allclose(arrays["hidden_mean"].astype(np.float32), rebuilt_mean, atol=0.02)
        assert np.allclose(arrays["hidden_mid_mean"].astype(np.float32), rebuilt_mid, atol=0.02)
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "rebuild" not in err, err
    code, stdout, err = run_cli(["bench", "choose", str(out), "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["summary"]["problems"] == 1 and report["choosers"][0]["name"] == "vote"


def test_choosers_are_compared_with_accuracy_runs_on_the_same_problems(tmp_path: Path) -> None:
    from qwq_local.bench.choose_run import compare_with
    from qwq_local.bench.compare import read_runs

    results = tmp_path / "runs.jsonl"
    lines = [{"strategy": "sc@8", "problem_id": "a", "correct": True, "generated_tokens": 100},
             {"strategy": "sc@8", "problem_id": "b", "correct": False, "generated_tokens": 300},
             {"strategy": "sc@8", "problem_id": "zz", "correct": True, "generated_tokens": 999}]
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    problems = from_records([record("a", [("1", False, 0.0), ("2", True, 5.0)]),
                             record("b", [("3", True, 1.0), ("4", False, 0.0)])])
    reports, _, _ = evaluate(problems, ["top:conf"], [])
    (row,) = compare_with(problems, reports, ["top:conf"], read_runs([results]))
    assert (row["problems"], row["baseline_right"], row["chooser_right"]) == (2, 1, 2)
    assert row["baseline_tokens"] == 200 and (row["wins"], row["losses"]) == (1, 0)
    results.write_text("not json\n")
    with pytest.raises(Exception, match="not an accuracy results line"):
        read_runs([results])


def test_a_head_values_the_banks_recorded_states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qwq_local.bench.choose_run import head_signals
    from qwq_local.value.qhead import QHeadWeights, write_head
    from tests.test_qhead import meta

    monkeypatch.setenv("QWQ_BANK_ARRAYS", str(tmp_path / "arrays"))
    lm = two_two_two()
    nodes = sample_tree("q", lm, (2, 2, 2), STOP, REPLY)
    for node in nodes:  # a state's first coordinate: its id, so the head's value rises with it
        node.hidden = np.array([float(node.id), 0.0, 0.0, 0.0], dtype=np.float32)
    save_arrays(tmp_path / "arrays" / "b" / "p1.npz", nodes)
    rec = bank_record(Problem("p1", "gsm8k", "q", "5"), nodes, (2, 2, 2), {}, 1, 1, 1.0, "b/p1.npz")
    head = write_head(tmp_path / "h.gguf", QHeadWeights(mean=np.zeros(4), std=np.ones(4), w=[1.0, 0, 0, 0], b=[0.0]),
                      meta(n_embd=4))
    from qwq_local.value.qhead import QHead

    values = head_signals(QHead.load(head))(rec)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert [v["head"] for v in values] == pytest.approx([sig(lf["node"]) for lf in rec["leaves"]], rel=1e-3)
    assert values[1]["head_min"] == pytest.approx(sig(0.0), rel=1e-3)  # its path starts at state 0
    rec["arrays"] = "b/missing.npz"
    with pytest.raises(Exception, match="not in the cache"):
        head_signals(QHead.load(head))(rec)


def test_monte_carlo_labels_are_the_leaves_below_each_state() -> None:
    from qwq_local.value.bank_labels import leaves_below

    nodes = sample_tree("q", two_two_two(), (2, 2, 2), STOP, REPLY)
    rec = bank_record(Problem("p1", "gsm8k", "q", "5"), nodes, (2, 2, 2), {}, 1, 1, 1.0, None)
    below = leaves_below(rec)
    assert below[0] == [True, False, True, True]  # A: under it 5, 6, 5, 5
    assert below[1] == [False]  # B ended the reply at once with 3
    assert below[3] == [True, True] and below[4] == [True]


def training_bank(tmp_path: Path, problems: int = 12, width: int = 576,
                  planted: str = "hidden") -> tuple[Path, list[str]]:
    """A bank of training problems (arrays under tmp_path/arrays) whose states' first coordinate says whether the
    leaves below them are right; the other coordinates are noise. `planted`: which of a step's states carries it
    (hidden, the step-end state, or hidden_mean, hidden_mid, hidden_mid_mean; the step-end states are then noise)."""
    from qwq_local.value.bank_labels import leaves_below

    rng = np.random.default_rng(0)
    bank = tmp_path / "bank"
    bank.mkdir()
    lines = []
    for i in range(problems):
        lm = two_two_two()
        nodes = sample_tree("q", lm, (2, 2, 2), STOP, REPLY)
        answer = "5" if i % 2 else "6"
        rec = bank_record(Problem(f"t{i}", "gsm8k", "q", answer), nodes, (2, 2, 2), {"data": "gsm8k-train"},
                          1, 1, 1.0, f"b/t{i}.npz")
        below = leaves_below(rec)
        for node in nodes:
            node.hidden = rng.normal(size=width).astype(np.float32)
            if planted != "hidden":
                setattr(node, planted, rng.normal(size=width).astype(np.float32))
            getattr(node, planted)[0] = 3.0 * (sum(below[node.id]) / len(below[node.id]) - 0.5)
        save_arrays(tmp_path / "arrays" / "b" / f"t{i}.npz", nodes)
        lines.append(json.dumps(rec))
    (bank / "bank.jsonl").write_text("\n".join(lines) + "\n")
    return bank, lines


def test_train_head_on_a_bank_of_training_problems(tmp_path: Path, smollm_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from qwq_local.value.qhead import QHead

    monkeypatch.setenv("QWQ_BANK_ARRAYS", str(tmp_path / "arrays"))
    bank, lines = training_bank(tmp_path)
    out = tmp_path / "h.gguf"
    code, _, err = run_cli(["train-head", "--bank", str(bank), "--out", str(out), "--model", str(smollm_path),
                            "--epochs", "30", "--target", "mean"], capsys)
    assert code == 0, err
    head = QHead.load(out)
    assert head.meta.n_states == 12 * 8 and head.meta.n_problems == 12 and "bank of gsm8k-train" in head.meta.training_data
    assert head.meta.training_data.endswith("Q=mean over the leaves below")
    # The head lists the problems that fitted it or chose its epoch; `bench choose --head` judges it on the others.
    held_out = {f"t{i}" for i in range(12)} - set(head.meta.problems)
    assert 2 <= len(held_out) <= 4 and len(head.meta.problems) + len(held_out) == 12
    code, stdout, err = run_cli(["bench", "choose", str(bank), "--head", str(out), "-c", "top:head", "--signal",
                                 "head"], capsys)
    assert code == 0, err
    assert f"{12 - len(held_out)} problems it was trained on left out" in err
    assert stdout.startswith(f"{len(held_out)} problems ·")
    code, stdout, err = run_cli(["bench", "choose", str(bank), "--head", str(out), "--json"], capsys)
    assert code == 0 and json.loads(stdout)["summary"]["left_out_trained_on"] == 12 - len(held_out)
    assert json.loads(stdout)["summary"]["problems"] == len(held_out)
    code, stdout, _ = run_cli(["head", "info", str(out)], capsys)
    assert code == 0 and f"{12 - len(held_out)} listed" in stdout
    trained_on_all = tmp_path / "all.jsonl"
    trained_on_all.write_text("".join(line + "\n" for line in lines if json.loads(line)["problem_id"] not in held_out))
    code, _, err = run_cli(["bench", "choose", str(trained_on_all), "--head", str(out)], capsys)
    assert code == 2 and "trained on every problem" in err
    code, _, err = run_cli(["train-head", "--bank", str(bank), "--out", str(out), "--model", str(smollm_path),
                            "--features", "first"], capsys)
    assert code == 2 and "--features must be last or mean, not 'first'" in err
    code, _, err = run_cli(["train-head", "--out", str(out), "--model", str(smollm_path), "--features", "mean"],
                           capsys)
    assert code == 2 and "--features: only with --bank" in err
    test = bank.parent / "test-bank"
    test.mkdir()
    (test / "bank.jsonl").write_text(lines[0].replace('"gsm8k-train"', '"gsm8k"') + "\n")
    code, _, err = run_cli(["train-head", "--bank", str(test), "--out", str(out), "--model", str(smollm_path)], capsys)
    assert code == 2 and "test problems" in err


def test_early_states_are_judged_by_the_leaves_below_them() -> None:
    from qwq_local.bench.choose import state_auc

    nodes = sample_tree("q", two_two_two(), (2, 2, 2), STOP, REPLY)
    rec = bank_record(Problem("p1", "gsm8k", "q", "5"), nodes, (2, 2, 2), {}, 1, 1, 1.0, None)
    for node, conf in zip(rec["nodes"], [9.0, 1.0, 2.0, 5.0]):  # A (3 of 4 right) over B (0 of 1); A2 over A1
        node["stats"] = {"conf": conf}
    assert state_auc([rec], "conf", 0) == (1.0, 1)
    assert state_auc([rec], "conf", 1) == (1.0, 1)
    rec["nodes"][2]["stats"]["conf"] = 7.0
    assert state_auc([rec], "conf", 1) == (0.0, 1)


def test_the_rules_signal_combined_signals_and_a_veto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qwq_local.bench.choose_run import run_choose

    texts = ["Each box holds 3 + 4 = 7 pens.\n\n", "Two: 2 * 7 = 15. \\boxed{15}",  # the second sum is wrong
             "Two: 2 * 7 = 14. \\boxed{14}", "About fourteen. \\boxed{14}"]  # the last has nothing to check
    nodes = [{"id": i, "parent": parent, "depth": int(parent is not None), "n_tokens": 5, "stats": {}, "text": text}
             for i, (parent, text) in enumerate(zip([None, 0, 0, None], texts))]
    rec = {"problem_id": "p", "generated_tokens": 20, "nodes": nodes,
           "leaves": [{"node": 1, "answer": "15", "correct": False, "tokens": 10, "stats": {"conf": 3.0}},
                      {"node": 1, "answer": "15", "correct": False, "tokens": 10, "stats": {"conf": 2.0}},
                      {"node": 2, "answer": "14", "correct": True, "tokens": 10, "stats": {"conf": 1.0}},
                      {"node": 3, "answer": "14", "correct": True, "tokens": 10, "stats": {"conf": 0.0}}]}
    (problem,) = from_records([rec])
    assert sorted((lf.answer, lf.signals["rules"]) for lf in problem.leaves) == [
        ("14", 0.0), ("14", 1.0), ("15", -1.0), ("15", -1.0)]  # the whole path's arithmetic, root first
    scales = Scales({"conf": 0.0, "rules": 0.0}, {"conf": 1.0, "rules": 1.0})
    assert make_chooser("top:conf")(problem.leaves, scales).answer == "15"
    assert make_chooser("top:conf!rules")(problem.leaves, scales).answer == "14"  # the wrong sums are vetoed
    assert make_chooser("top:conf+rules*4")(problem.leaves, scales).answer == "14"  # 1 + 4 against 3 - 4
    assert make_chooser("top:conf+rules*0.5")(problem.leaves, scales).answer == "15"  # 3 - 0.5 against 1 + 0.5
    wrong_only = [Leaf("15", False, {"conf": 3.0, "rules": -1.0}, 10, 1)]
    assert make_chooser("vote!rules")(wrong_only, scales).answer == "15"  # never vetoes every leaf
    combined = signal_report([problem], "conf+rules*4", scales)
    assert combined.auc == pytest.approx(1.0) and combined.mean is None
    for bad in ("top:conf*x", "top:+conf", "top:conf*", "top:conf*inf", "vote!", "vote!rules^2",
                "wvote:conf!rules*2", "wvote:conf!rules+conf", "top:con-f"):
        with pytest.raises(ValueError):
            make_chooser(bad)
    no_rules = Leaf("16", False, {"conf": 9.0}, 10, 9)  # a missing veto signal keeps the leaf
    assert make_chooser("top:conf!rules")([*problem.leaves, no_rules], scales).answer == "16"
    inf_conf = Leaf("17", False, {"conf": math.inf, "rules": 1.0}, 10, 9)  # a non-finite term: no value at all
    assert scales.value((("conf", 1.0), ("rules", 1.0)), inf_conf) is None
    assert make_chooser("top:conf+rules*2")([inf_conf, *problem.leaves], scales).answer == "14"  # not the inf
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "bank.jsonl").write_text(json.dumps({**rec, "reference": "14", "shape": [2], "setup": {}}) + "\n")
    run_choose([bank], ["vote", "top:conf!rules"], ["conf+rules*4"], None, None, True)
    report = json.loads(capsys.readouterr().out)
    assert [c["correct"] for c in report["choosers"]] == [0, 1]  # the vote's 15 (first seen of 2 against 2), then 14
    assert report["signals"][0]["name"] == "conf+rules*4" and report["signals"][0]["auc"] == pytest.approx(1.0)
    for choosers, signals, missing in ((["wvote:tail_cnf"], ["conf"], "tail_cnf"), (["vote!ruls"], [], "ruls"),
                                       (["vote"], ["conf+head"], "head")):
        with pytest.raises(UsageError, match=f"no signal {missing} in the bank"):
            run_choose([bank], choosers, signals, None, None, False)
    with pytest.raises(UsageError, match="--signal: signal 'conf\\*': write"):
        run_choose([bank], ["vote"], ["conf*"], None, None, False)


def test_cross_fitted_heads_value_every_problem_with_a_head_that_never_saw_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import qwq_local.value.training as training

    monkeypatch.setenv("QWQ_BANK_ARRAYS", str(tmp_path / "arrays"))
    bank, _ = training_bank(tmp_path, problems=15, width=32)
    trained: list[set[str]] = []
    real = training.train_head

    def spy(X, y, groups, **kwargs):  # type: ignore[no-untyped-def]
        trained.append(set(groups.tolist()))
        return real(X, y, groups, **kwargs)

    monkeypatch.setattr(training, "train_head", spy)
    code, stdout, err = run_cli(["bench", "choose", str(bank), "--head-folds", "5", "-c", "vote,top:head",
                                 "--signal", "head", "--json"], capsys)
    assert code == 0, err
    assert len(trained) == 5 and all(len(seen) == 12 for seen in trained)
    assert set().union(*[{f"t{i}" for i in range(15)} - seen for seen in trained]) == {f"t{i}" for i in range(15)}
    report = json.loads(stdout)
    (head,) = report["signals"]
    assert head["name"] == "head" and head["auc"] > 0.75  # the first coordinate carries over to unseen problems
    code, _, err = run_cli(["bench", "choose", str(bank), "--head-folds", "99"], capsys)
    assert code == 2 and "--head-folds must be between 2 and the bank's 15 problems" in err
    code, _, err = run_cli(["bench", "choose", str(bank), "--head-folds", "3", "--head", str(tmp_path / "h.gguf")],
                           capsys)
    assert code == 2 and "give one" in err


def test_a_head_trained_on_the_steps_mean_states_reads_them(tmp_path: Path, smollm_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from qwq_local.app import runtime
    from qwq_local.value.qhead import QHead

    monkeypatch.setenv("QWQ_BANK_ARRAYS", str(tmp_path / "arrays"))
    bank, _ = training_bank(tmp_path, problems=40, width=8, planted="hidden_mean")
    plan_model = runtime.plan_model  # a backbone as wide as the toy states (SmolLM's are 576)
    monkeypatch.setattr(runtime, "plan_model",
                        lambda *a, **k: (lambda p: replace(p, info=replace(p.info, n_embd=8)))(plan_model(*a, **k)))
    auc = {}
    for features, pooling in (("last", "last_token_of_step"), ("mean", "mean_of_step")):
        out = tmp_path / f"{features}.gguf"
        code, _, err = run_cli(["train-head", "--bank", str(bank), "--out", str(out), "--model", str(smollm_path),
                                "--features", features], capsys)
        assert code == 0, err
        assert QHead.load(out).meta.pooling == pooling
        code, stdout, err = run_cli(["bench", "choose", str(bank), "--head", str(out), "-c", "vote", "--signal",
                                     "head", "--json"], capsys)
        assert code == 0, err
        auc[features] = json.loads(stdout)["signals"][0]["auc"]
    assert auc["mean"] > 0.75 and auc["last"] < 0.7, auc  # `bench choose --head` reads what the head was trained on


def test_cross_fitted_heads_read_the_steps_mean_states_when_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QWQ_BANK_ARRAYS", str(tmp_path / "arrays"))
    bank, _ = training_bank(tmp_path, problems=15, width=8, planted="hidden_mean")
    auc = {}
    for features in ("last", "mean", "last+mean"):
        code, stdout, err = run_cli(["bench", "choose", str(bank), "--head-folds", "5", "--head-features", features,
                                     "-c", "vote", "--signal", "head", "--json"], capsys)
        assert code == 0, err
        auc[features] = json.loads(stdout)["signals"][0]["auc"]
    assert auc["mean"] > 0.75 and auc["last+mean"] > 0.75 and auc["last"] < 0.7, auc  # the signal is in the means
    (tmp_path / "mid").mkdir()
    mid, _ = training_bank(tmp_path / "mid", problems=15, width=8, planted="hidden_mid_mean")
    monkeypatch.setenv("QWQ_BANK_ARRAYS", str(tmp_path / "mid" / "arrays"))
    code, stdout, err = run_cli(["bench", "choose", str(mid), "--head-folds", "5", "--head-features", "mid_mean",
                                 "-c", "vote", "--signal", "head", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["signals"][0]["auc"] > 0.75, err
    monkeypatch.setenv("QWQ_BANK_ARRAYS", str(tmp_path / "arrays"))
    code, _, err = run_cli(["bench", "choose", str(bank), "--head-features", "mean"], capsys)
    assert code == 2 and "only with --head-folds" in err
    code, _, err = run_cli(["bench", "choose", str(bank), "--head-folds", "5", "--head-features", "first"], capsys)
    assert code == 2 and "--head-features: name one or more of last, mean, mid, mid_mean joined by +" in err
    # Arrays from before the means were recorded: a one-line error that says how to add them.
    old = tmp_path / "arrays" / "b" / "t3.npz"
    with np.load(old) as arrays:
        np.savez_compressed(old, hidden=arrays["hidden"], tokens=arrays["tokens"], offsets=arrays["offsets"])
    code, _, err = run_cli(["bench", "choose", str(bank), "--head-folds", "5", "--head-features", "mean"], capsys)
    assert code == 3 and "predate the steps' mean and middle-layer states; rerun `qwq bench bank`" in err, err
