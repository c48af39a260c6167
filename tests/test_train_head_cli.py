"""`qwq train-head` and `qwq head info` on the real tiny model: rollout labels, resume, a head that loads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from qwq_local.cli import main
from qwq_local.errors import ExitCode
from qwq_local.value.labels import LabelStore
from qwq_local.value.qhead import QHead

pytestmark = pytest.mark.model

PROBLEMS = [("What is 2 + 3?", "5"), ("What is 10 - 4?", "6"), ("What is 3 * 3?", "9"), ("What is 8 / 2?", "4"),
            ("What is 1 + 1?", "2"), ("What is 7 - 7?", "0")]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_train_head_labels_resumes_trains_and_the_head_loads(tmp_path: Path, qwen_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "question": q, "answer": f"#### {a}"}) + "\n"
                            for i, (q, a) in enumerate(PROBLEMS)))
    out = tmp_path / "head.gguf"
    common = ["train-head", "--model", str(qwen_path), "--data", str(data), "--rollouts", "2", "--max-steps", "2",
              "--reply-tokens", "48", "--out", str(out), "--ctx", "2048", "--epochs", "20", "--temperature", "1.0"]
    code, _, err = run(common + ["--problems", "2"], capsys)
    store = LabelStore(out.with_name("head.labels.jsonl"))
    assert store.done_problems() == {"t0", "t1"}
    first = len(store)
    assert first >= 2
    row = store.rows()[0]
    assert row.hidden.shape == (896,) and row.n_rollouts in (1, 2) and 0 <= row.q_mean <= row.q_max <= 1
    # A longer run labels only the new problems, then trains on all of them (or says why it cannot).
    code, _, err = run(common + ["--problems", "4"], capsys)
    assert store.done_problems() == {f"t{i}" for i in range(4)} and len(store) > first
    if code != 0:  # every label one class: a clear one-line error, not a traceback
        lines = err.strip().splitlines()
        assert lines[-1].startswith("error: cannot train") and "Traceback" not in err
        assert not any(line.startswith("llama_") for line in lines)  # llama.cpp's chatter stays quiet
        # Which branch a run takes depends on the draws; for a head that surely trains, each real state gets a
        # twin under a new problem with the opposite outcome, and --train-only trains on the stored labels.
        twins = []
        for r in store.rows():
            won = not any(r.correct)
            twins.append(replace(r, problem_id=f"flip-{r.problem_id}", q_max=float(won), q_mean=float(won),
                                 correct=[won] * r.n_rollouts))
        store.append(twins)
        code, _, err = run(common + ["--problems", "4", "--train-only"], capsys)
    assert code == 0, err
    head = QHead.load(out, architecture="qwen2", n_embd=896)
    assert head.meta.n_states == len(store) and head.meta.n_problems == len({r.problem_id for r in store.rows()})
    assert "auc" in head.meta.metrics and head.meta.model_sha256
    code, shown, _ = run(["head", "info", str(out)], capsys)
    assert code == 0 and "qwen2" in shown and "held-out auc" in shown
    code, shown, err = run(["head", "eval", str(out), "--labels", str(store.path), "--json"], capsys)
    assert code == 0, err
    assert json.loads(shown)["subsets"]["all"]["states"] == len(store)  # real states, read back and scored
    # The trained head is used by a search: the model given by path has no catalog head, --head gives it one.
    problem = tmp_path / "p.md"
    problem.write_text("What is 4 + 4?\n")
    solve = ["solve", str(problem), "--model", str(qwen_path), "--strategy", "bon", "--trajectories", "2",
             "--max-tokens", "24", "--ctx", "2048", "--seed", "1", "--json"]
    code, shown, err = run(solve, capsys)
    assert code == 0 and json.loads(shown)["scorer"] == "confidence"
    code, shown, err = run(solve + ["--head", str(out)], capsys)
    assert code == 0, err
    assert json.loads(shown)["scorer"] == "qhead"


def test_train_head_refuses_test_data_and_missing_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["train-head", "--data", "gsm8k", "--out", str(tmp_path / "h.gguf")], capsys)
    assert code == ExitCode.USAGE and "test set" in err
    code, _, err = run(["train-head", "--train-only", "--out", str(tmp_path / "h.gguf")], capsys)
    assert code == ExitCode.USAGE and "no labels" in err
    code, _, err = run(["train-head", "--rollouts", "0", "--out", str(tmp_path / "h.gguf")], capsys)
    assert code == ExitCode.USAGE and "--rollouts" in err
    code, _, err = run(["head", "info", str(tmp_path / "none.gguf")], capsys)
    assert code != 0 and err.startswith("error:") and "Traceback" not in err


def test_a_problem_that_fails_is_skipped_and_a_failing_model_stops_the_run(
    tmp_path: Path, qwen_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import qwq_local.value.rollouts as rollouts

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "question": q, "answer": f"#### {a}"}) + "\n"
                            for i, (q, a) in enumerate(PROBLEMS)))
    out = tmp_path / "head.gguf"
    common = ["train-head", "--model", str(qwen_path), "--data", str(data), "--out", str(out), "--ctx", "2048"]
    store = LabelStore(out.with_name("head.labels.jsonl"))

    def label_problem(policy: object, question: str, *args: object) -> list:
        if "10 - 4" in question or failing_everywhere:
            raise RuntimeError("decode failed")
        return []

    failing_everywhere = False
    monkeypatch.setattr(rollouts, "label_problem", label_problem)
    code, _, err = run(common + ["--problems", "3"], capsys)
    assert "warning: problem t1 skipped (RuntimeError: decode failed)" in err
    assert store.done_problems() == {"t0", "t1", "t2"}  # t1 will not stop every later resume
    assert code != 0 and "error: " in err and "Traceback" not in err  # no labels at all to train on
    failing_everywhere = True
    code, _, err = run(common + ["--problems", "6"], capsys)
    assert code == ExitCode.UNEXPECTED
    assert err.strip().splitlines()[-1].startswith("error: unexpected RuntimeError: decode failed")
    assert store.done_problems() == {"t0", "t1", "t2"}  # three failures in a row: none marked done


def test_labels_of_another_model_are_refused_before_it_loads(tmp_path: Path, qwen_path: Path, smollm_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"id": "t0", "question": "What is 2 + 3?", "answer": "#### 5"}) + "\n")
    labels = tmp_path / "shared.labels.jsonl"
    common = ["train-head", "--data", str(data), "--problems", "1", "--rollouts", "1", "--max-steps", "1",
              "--reply-tokens", "16", "--labels", str(labels), "--ctx", "2048"]
    run(common + ["--model", str(qwen_path), "--out", str(tmp_path / "qwen.gguf")], capsys)
    store = LabelStore(labels)
    assert store.done_problems() == {"t0"}
    with labels.open() as f:
        commit = [json.loads(line) for line in f if '"done"' in line][-1]
    assert commit["model"] == {"file": qwen_path.name, "size": qwen_path.stat().st_size}
    for extra in ([], ["--train-only"]):
        code, _, err = run(common + extra + ["--model", str(smollm_path), "--out", str(tmp_path / "s.gguf")], capsys)
        assert code == ExitCode.HEAD_MISMATCH, err
        assert err.strip() == (f"error: label store {labels} holds labels of model {qwen_path.name} "
                               f"({qwen_path.stat().st_size} bytes), not {smollm_path.name} "
                               f"({smollm_path.stat().st_size} bytes): pick another --labels path")
        assert not (tmp_path / "s.gguf").exists()


def test_train_head_checks_out_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["train-head", "--out", str(tmp_path / "no" / "h.gguf")], capsys)
    assert code == ExitCode.USAGE and "not a file in an existing directory" in err
    code, _, err = run(["train-head", "--out", str(tmp_path)], capsys)
    assert code == ExitCode.USAGE and "not a file in an existing directory" in err
