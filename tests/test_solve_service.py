"""`qwq solve` end to end through the service layer on a scripted LM: no model is loaded or decoded."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner

from qwq_local.app import runtime
from qwq_local.app.search import SOLVE_SEARCH, prepare_search, search_options
from qwq_local.app.solve import Backend, solve_search
from qwq_local.cli import app
from qwq_local.config import load_settings
from tests.fakes import ScriptedPolicy, script_from_tree, write_tiny_gguf

RIGHT = "48 / 2 = 24 clips in May.\n\n"
WRONG = "She sold 100 clips in May.\n\n"
SCRIPT = script_from_tree({
    RIGHT: {"48 + 24 = 72, so the answer is \\boxed{72}.": None},
    WRONG: {"100 + 48 = 148, so the answer is \\boxed{148}.": None},
})


class ScriptedBackend(Backend):
    """A Backend whose policies are one ScriptedPolicy per search; the model is never loaded."""

    def __init__(self, script: Any) -> None:
        self.made: list[ScriptedPolicy] = []
        object.__setattr__(self, "policies", self._policies)
        self.script = script

    @contextlib.contextmanager
    def _policies(self, plan: runtime.ModelPlan, settings: Any) -> Iterator[Any]:
        @contextlib.contextmanager
        def factory(setup: Any, sampling: Any, history: Any = ()) -> Iterator[ScriptedPolicy]:
            policy = ScriptedPolicy(self.script)
            self.made.append(policy)
            yield policy

        yield factory


@pytest.fixture
def tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(runtime, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def test_solve_astar_json_runs_on_a_scripted_lm(tiny_model: Path, tmp_path: Path) -> None:
    problem = tmp_path / "natalia.md"
    problem.write_text("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                       "in May. How many clips did Natalia sell altogether in April and May?\n")
    backend = ScriptedBackend(SCRIPT)
    result = CliRunner().invoke(app, ["solve", str(problem), "--model", str(tiny_model), "--strategy", "astar",
                                      "--scorer", "rules", "--candidates", "2", "--trajectories", "1", "--json"],
                                obj=backend)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["strategy"] == "astar" and data["scorer"] == "rules" and data["format"] == "math"
    assert data["final_answer"] == "72" and data["answer"].endswith("\\boxed{72}.")
    assert data["model"] == "tiny.gguf" and data["complete"] is True and data["stop_reason"] == "done"
    assert data["expansions"] == 2 and data["nodes"] == 4 and data["chosen_path"][0] == 0
    assert data["tokens"]["answer"] == len((RIGHT + "48 + 24 = 72, so the answer is \\boxed{72}.").split())
    [policy] = backend.made
    assert policy.questions == [problem.read_text().strip() + "\n\nPlease reason step by step, and put your final "
                                "answer within \\boxed{}."]
    assert [call.k for call in policy.sample_calls] == [2, 2]
    assert "_tree" not in data and "tree" not in data


def test_solve_in_the_program_format_says_why_a_program_gave_no_answer(tiny_model: Path, tmp_path: Path) -> None:
    problem = tmp_path / "natalia.md"
    problem.write_text("Natalia sold 48 clips in April and half as many in May. How many in all?\n")
    failing = script_from_tree({"```python\nmay = 48 / 0\n\n": {"print(48 + may)\n```\nSo \\boxed{72}.": None}})
    result = CliRunner().invoke(app, ["solve", str(problem), "--model", str(tiny_model), "--strategy", "astar",
                                      "--format", "program", "--candidates", "1", "--trajectories", "1",
                                      "--completions", "1", "--widen", "0"], obj=ScriptedBackend(failing))
    assert result.exit_code == 0, result.output
    assert "Final answer" not in result.stderr  # the program failed: its \\boxed{72} is not its answer
    assert "note: no final answer: its program failed: ZeroDivisionError: division by zero" in result.stderr
    working = script_from_tree({"```python\nmay = 48 // 2\n\n": {"print(48 + may)\n```": None}})
    result = CliRunner().invoke(app, ["solve", str(problem), "--model", str(tiny_model), "--strategy", "astar",
                                      "--format", "program", "--candidates", "1", "--trajectories", "1",
                                      "--completions", "1", "--widen", "0"], obj=ScriptedBackend(working))
    assert "Final answer: 72" in result.stderr and "note: no final answer" not in result.stderr


def test_search_setup_is_checked_and_typed(tiny_model: Path) -> None:
    settings = load_settings({"model": str(tiny_model), "max_tokens": 300})
    plan = runtime.plan_model(runtime.locate(settings.model, settings), settings)
    setup = prepare_search(plan, settings, "beam", search_options(SOLVE_SEARCH, trajectories=3),
                           "rules+self-eval:2")
    assert setup.scorers == (("rules", 1.0), ("self-eval", 2.0)) and setup.scorer_label == "rules+self-eval:2"
    assert setup.config.n_samples == 3 and setup.config.max_reply_tokens == 300 and setup.config.finish_partial
    assert setup.config.thinking is False and setup.head is None and setup.note is None
    default = prepare_search(plan, settings, "astar", SOLVE_SEARCH)
    assert default.scorer_label == "confidence" and default.note is None
    backend = ScriptedBackend(SCRIPT)
    with backend.policies(plan, settings) as policies:
        result = solve_search(setup, "What is 48 + 24?", "math", settings.sampling, policies)
    assert result.search is not None and result.search.scorer == "rules+self-eval:2"
    assert result.tree and {n["id"] for n in result.tree if n["chosen"]} == set(result.search.chosen_path)


def test_tests_that_need_a_model_are_marked(request: pytest.FixtureRequest) -> None:
    """The conftest hook marks by fixture: `pytest -m "not model"` never touches a real model."""
    items = {item.name: item for item in request.session.items}
    cli_test = next((i for n, i in items.items() if n.startswith("test_solve_gsm8k_problem")), None)
    if cli_test is not None:  # collected in this run
        assert cli_test.get_closest_marker("model") is not None
    assert request.node.get_closest_marker("model") is None


def test_astar_starts_from_the_measured_settings_and_other_strategies_do_not() -> None:
    from qwq_local.app.search import ASTAR_CHANGES, BENCH_SEARCH, CHAT_SEARCH, search_defaults

    for base in (SOLVE_SEARCH, CHAT_SEARCH, BENCH_SEARCH):
        astar = search_defaults("astar", base)
        assert (astar.candidates, astar.trajectories, astar.max_depth, astar.completions, astar.choose,
                astar.agg, astar.widen) == (2, 8, 2, 2, "value", "last", 2) == tuple(ASTAR_CHANGES.values())
        assert astar.time_limit == base.time_limit  # the front end's own budget stays
        for other in ("beam", "bon", "sc"):
            assert search_defaults(other, base) == base
    given = search_options(search_defaults("astar"), max_depth=5)
    assert given.max_depth == 5 and given.choose == "value"
    programs = search_defaults("astar", SOLVE_SEARCH, "program")  # programs are checked by running: one vote each
    assert programs == replace(search_defaults("astar"), choose="vote")
    assert search_defaults("astar", SOLVE_SEARCH, "math") == search_defaults("astar")
    assert search_defaults("sc", SOLVE_SEARCH, "program") == SOLVE_SEARCH
