"""benchmarks/analysis/pot_vote.py: programs answered by the real sandbox, and the offline vote over them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pot_vote", ROOT / "benchmarks" / "analysis" / "pot_vote.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["pot_vote"] = module
    spec.loader.exec_module(module)
    return module


pot_vote = load_script()


def test_a_program_is_answered_by_what_it_prints_in_the_sandbox() -> None:
    reply = "Steps:\n```python\n# price of 3 apples\ncost = 3 * 4\nprint('total')\nprint(cost + 0.0)\n```\n"
    assert pot_vote.program_answer(reply, "12") == {"answer": "12.0", "correct": True, "ran": True}
    assert pot_vote.program_answer(reply, "13")["correct"] is False
    failing = "```python\nx = 1 / 0\nprint(x)\n```"
    assert pot_vote.program_answer(failing, "1") == {"answer": None, "correct": False, "ran": False}
    silent = "```python\nx = 5\n```"
    assert pot_vote.program_answer(silent, "5")["answer"] is None


def test_the_vote_counts_numbers_as_numbers_and_ignores_missing_answers() -> None:
    assert pot_vote.vote([("12.0", True), ("12", True), ("7", False), (None, False)]) is True
    assert pot_vote.vote([("$1,000", False), ("7", True), ("1000.0", False)]) is False
    assert pot_vote.vote([("3", True), ("4", False)]) is True  # a tie goes to the earliest answer
    assert pot_vote.vote([(None, False)]) is False
    assert pot_vote.vote([("3", True), ("4", False)], [1.0, 2.0]) is False  # weighted: the heavier answer


def test_a_programs_weight_is_the_default_astars_odds_of_its_confidence() -> None:
    sure, unsure = pot_vote.confidence_weight(15.0), pot_vote.confidence_weight(11.0)
    assert sure > 1.0 > unsure > 0.0 and pot_vote.confidence_weight(None) == pytest.approx(1.0)


def test_compare_mixes_programs_with_the_banks_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [{"id": 0, "parent": None, "n_tokens": 5}] + [{"id": i, "parent": 0, "n_tokens": 10} for i in (1, 2)]
    bank = {"problem_id": "p", "generated_tokens": 25, "nodes": nodes,
            "leaves": [{"node": 1, "answer": "4", "correct": False, "tokens": 15, "stats": {}},
                       {"node": 2, "answer": "4", "correct": False, "tokens": 15, "stats": {}}]}
    samples = [{"answer": "5", "correct": True, "ran": True, "tokens": 20}] * 3 + [
        {"answer": None, "correct": False, "ran": False, "tokens": 20}]
    (tmp_path / "bank.jsonl").write_text(json.dumps(bank) + "\n")
    (tmp_path / "pot.jsonl").write_text(json.dumps({"problem_id": "p", "samples": samples}) + "\n"
                                        + json.dumps({"problem_id": "not in the bank", "samples": samples}) + "\n")
    pot_vote.compare(tmp_path / "pot.jsonl", tmp_path / "bank.jsonl")
    out = capsys.readouterr().out
    assert "2 problems: 8 programs, plain vote 2, weighted by tail confidence 2 (+0/-0" in out
    assert "1 problems in both" in out
    assert "tree of 8 CoT replies, vote      0" in out
    assert "8 programs, vote                 1" in out
    assert "programs that failed to run      1" in out
    assert "tokens per problem, 8 programs             80" in out
    assert "tokens per problem, tree of 8 CoT replies  25" in out
