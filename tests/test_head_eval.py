"""`qwq head eval`: a head's metrics on stored labels, by kind of state, and how it would pick among replies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qwq_local.cli import main
from qwq_local.errors import ExitCode
from qwq_local.value.assess import assess
from qwq_local.value.labels import LabelRow, LabelStore
from qwq_local.value.qhead import QHeadMeta, QHeadWeights, write_head

N_EMBD = 8


def test_assess_splits_steps_from_reply_ends_and_counts_choices() -> None:
    p = np.array([0.9, 0.2, 0.8, 0.3, 0.6, 0.7, 0.1, 0.5])
    y = np.array([1, 0, 0, 1, 1, 0, 1, 1.0])
    terminal = np.array([False, False, True, True, True, True, True, True])
    groups = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])
    found = assess(p, y, terminal, groups)
    assert set(found.subsets) == {"all", "steps", "terminal"}
    problems, steps = found.subsets["steps"]
    assert problems == 1 and steps.n == 2 and steps.auc == 1.0
    problems, ends = found.subsets["terminal"]
    assert problems == 3 and ends.n == 6 and ends.positives == 4
    # a: ends 0.8 (wrong) and 0.3 (right) -> head wrong; b: 0.6 (right) and 0.7 (wrong) -> wrong; c: all right, skipped
    assert (found.choice.problems, found.choice.head_right, found.choice.chance) == (2, 0, 1.0)
    found = assess(1 - p, y, terminal, groups)
    assert found.choice.head_right == 2


def test_assess_leaves_out_a_kind_of_state_that_is_not_there() -> None:
    found = assess(np.array([0.1, 0.9]), np.array([0.0, 1.0]), np.array([False, False]), np.array(["a", "b"]))
    assert set(found.subsets) == {"all", "steps"} and found.choice.problems == 0


def write_fixture(directory: Path, n_embd: int = N_EMBD) -> tuple[Path, Path]:
    """A head whose value rises with the first feature, and labels where a large first feature is right."""
    directory.mkdir(exist_ok=True)
    head = write_head(directory / "h.gguf", QHeadWeights(mean=np.zeros(N_EMBD), std=np.ones(N_EMBD),
                                                        w=np.eye(N_EMBD)[0] * 3, b=[0.0]),
                      QHeadMeta(architecture="qwen2", n_embd=N_EMBD, model_sha256="ab" * 32))
    store = LabelStore(directory / "labels.jsonl")
    for i in range(3):
        rows = []
        for j, (x0, ok, end) in enumerate([(1.0, True, False), (-1.0, False, False), (2.0, True, True),
                                           (-2.0, False, True)]):
            hidden = np.zeros(n_embd, np.float32)
            hidden[0] = x0
            rows.append(LabelRow(f"p{i}", j, "step", float(ok), float(ok), 1, [ok], hidden, terminal=end))
        store.append(rows, problem_id=f"p{i}")
    return head, store.path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_head_eval_prints_metrics_and_choices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head, labels = write_fixture(tmp_path)
    code, out, err = run(["head", "eval", str(head), "--labels", str(labels)], capsys)
    assert code == 0, err
    assert "right in 3 of 3 problems" in out and "(a random pick: 1.5)" in out
    assert any(line.split()[:4] == ["terminal", "3", "6", "50%"] and line.split()[4] == "1.000"
               for line in out.splitlines())
    code, out, err = run(["head", "eval", str(head), "--labels", str(labels), "--json", "--target", "mean"], capsys)
    report = json.loads(out)
    assert code == 0 and report["subsets"]["all"]["states"] == 12 and report["subsets"]["steps"]["auc"] == 1.0
    assert report["choice"] == {"problems": 3, "head_right": 3, "chance": 1.5}


def test_head_eval_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head, labels = write_fixture(tmp_path / "a")
    code, _, err = run(["head", "eval", str(head), "--labels", str(tmp_path / "none.jsonl")], capsys)
    assert code == ExitCode.FILE_NOT_FOUND and "not found" in err and "Traceback" not in err
    code, _, err = run(["head", "eval", str(head), "--labels", str(labels), "--target", "best"], capsys)
    assert code == ExitCode.USAGE and "--target" in err
    (tmp_path / "empty.jsonl").write_text("")
    code, _, err = run(["head", "eval", str(head), "--labels", str(tmp_path / "empty.jsonl")], capsys)
    assert code == ExitCode.EMPTY_INPUT and "no committed labels" in err
    _, wider = write_fixture(tmp_path / "b", n_embd=N_EMBD * 2)  # states of another model
    code, _, err = run(["head", "eval", str(head), "--labels", str(wider)], capsys)
    assert code == ExitCode.HEAD_MISMATCH and len(err.strip().splitlines()) == 1 and "Traceback" not in err
