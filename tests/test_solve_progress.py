"""`qwq solve` while it runs: the live progress line on stderr, Ctrl-C keeping the best answer, stop_reason on every
strategy's JSON, the thinking budget and loop guard in direct solves (scripted LM and fake chat; no model)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qwq_local.app import runtime
from qwq_local.app.solve import solve_direct
from qwq_local.cli import app, main
from qwq_local.config import Sampling
from qwq_local.dialog.guard import Intervention
from qwq_local.render import console
from qwq_local.render.solve_progress import SolveProgress, search_line
from qwq_local.search.protocol import SearchProgress
from tests.fake_chat import FakeChat, Reply
from tests.fakes import FakeClock, ScriptedPolicy, write_tiny_gguf
from tests.test_solve_service import SCRIPT, ScriptedBackend

QUESTION = "Natalia sold 48 clips in April and half as many in May. How many altogether?\n"


@pytest.fixture
def problem(tmp_path: Path) -> Path:
    path = tmp_path / "natalia.md"
    path.write_text(QUESTION)
    return path


@pytest.fixture
def tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(runtime, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def terminal_env(clock: FakeClock | None = None) -> console.Env:
    """An Env whose stderr is a terminal (StringIO standing in) and stdout a pipe."""
    return console.Env(stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO(), stderr_isatty=True,
                       clock=clock or FakeClock())


class InterruptingBackend(ScriptedBackend):
    """A ScriptedBackend whose policy gets Ctrl-C on sample call number `at`."""

    def __init__(self, script: Any, at: int) -> None:
        super().__init__(script)
        self.at = at

    def _policies(self, plan: Any, settings: Any) -> Any:
        import contextlib

        backend = self

        @contextlib.contextmanager
        def outer() -> Any:
            @contextlib.contextmanager
            def factory(setup: Any, sampling: Any, history: Any = ()) -> Any:
                calls = [0]

                def hook() -> None:
                    calls[0] += 1
                    if calls[0] == backend.at:
                        raise KeyboardInterrupt

                policy = ScriptedPolicy(backend.script, on_sample=hook)
                backend.made.append(policy)
                yield policy

            yield factory

        return outer()


# ---------------------------------------------------------------- the live line


def test_search_line_names_expansions_best_f_and_finished_paths() -> None:
    assert search_line("astar", None, 0) == "astar · 0 tokens"
    assert search_line("astar", SearchProgress("astar", 3, 7, 1, 1.4204, 812), 830) == \
        "astar · 3 expansions · best f 1.42 · 1 finished · 830 tokens"


def test_the_live_line_is_redrawn_and_each_step_leaves_one_line() -> None:
    clock = FakeClock()
    env = terminal_env(clock)
    progress = SolveProgress(env, ticker=False)
    progress.start("loading tiny.gguf…")
    clock.advance(2.5)
    progress.draw()  # what the ticker does every 0.2 s
    assert env.stderr.getvalue().endswith("loading tiny.gguf… · 2.5 s")
    progress.done("loaded tiny.gguf in 2.5 s")
    progress.searching("astar")
    assert env.stderr.getvalue().endswith("astar: reading the prompt… · 0.0 s")
    tokens = [0]
    progress.policy_ready(lambda: tokens[0])
    progress.search(SearchProgress("astar", 0, 1, 0, None, 0))
    tokens[0] = 57  # the policy samples between two reports: the line counts its tokens live
    clock.advance(0.7)
    progress.draw()
    assert env.stderr.getvalue().endswith("astar · 0 expansions · 0 finished · 57 tokens · 0.7 s")
    progress.search(SearchProgress("astar", 1, 3, 0, 1.8, 57))
    progress.searched(3.0, "interrupted")
    progress.close()
    lines = env.stderr.getvalue().replace("\r\x1b[2K", "\n").splitlines()
    kept = [line for line in lines if line and not line[0] in console.SPINNER]
    assert kept == ["loaded tiny.gguf in 2.5 s",
                    "▸ astar · 1 expansion · best f 1.80 · 0 finished · 57 tokens · 3.0 s · stopped: interrupted"]
    assert env.stdout.getvalue() == ""


def test_no_live_line_when_stderr_is_not_a_terminal_or_quiet() -> None:
    for env, enabled in ((console.Env(io.StringIO(), io.StringIO(), io.StringIO()), None), (terminal_env(), False)):
        progress = SolveProgress(env, enabled=enabled)
        progress.start("loading…")
        progress.searching("astar")
        progress.search(SearchProgress("astar", 1, 3, 0, 1.0, 5))
        progress.searched(1.0, "done")
        progress.close()
        assert env.stderr.getvalue() == ""


def test_the_ticker_redraws_on_its_own_while_a_step_runs() -> None:
    import time

    env = terminal_env()
    env.clock = time.monotonic
    progress = SolveProgress(env)
    progress.start("thinking…")
    deadline = time.monotonic() + 5
    while env.stderr.getvalue().count("thinking…") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    progress.close()
    assert env.stderr.getvalue().count("thinking…") >= 3  # drawn again with no event from the solve


# ---------------------------------------------------------------- solve on the CLI


def test_solve_astar_shows_search_progress_on_a_terminal(tiny_model: Path, problem: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    env = terminal_env()
    monkeypatch.setattr(console.Env, "from_process", classmethod(lambda cls, *a, **k: env))
    backend = ScriptedBackend(SCRIPT)
    result = CliRunner().invoke(app, ["solve", str(problem), "--model", str(tiny_model), "--strategy", "astar",
                                      "--scorer", "rules", "--candidates", "2", "--trajectories", "1"], obj=backend)
    assert result.exit_code == 0, result.output
    drawn = env.stderr.getvalue()
    assert "loading tiny.gguf" in drawn and "astar: reading the prompt…" in drawn
    assert "astar · 0 expansions · 0 finished · 0 tokens" in drawn  # right after the prompt is read
    assert re.search(r"astar · 1 expansion · best f \d\.\d\d · 0 finished · \d+ tokens", drawn)
    tokens = backend.made[0].stats.generated_tokens
    assert re.search(rf"\x1b\[2K▸ astar · 2 expansions · best f \d\.\d\d · 1 finished · {tokens} tokens · [\d.]+ s\n$", drawn)
    assert "\\boxed{72}" in result.stdout and "expansion" not in result.stdout


def test_quiet_solve_draws_nothing(tiny_model: Path, problem: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = terminal_env()
    monkeypatch.setattr(console.Env, "from_process", classmethod(lambda cls, *a, **k: env))
    result = CliRunner().invoke(app, ["solve", str(problem), "--model", str(tiny_model), "--strategy", "astar",
                                      "--scorer", "rules", "-K", "2", "-N", "1", "--quiet"],
                                obj=ScriptedBackend(SCRIPT))
    assert result.exit_code == 0 and env.stderr.getvalue() == ""


@pytest.mark.parametrize("strategy", ["astar", "beam"])
def test_ctrl_c_in_a_search_prints_the_best_path_so_far_and_exits_130(strategy: str, tiny_model: Path,
                                                                       problem: Path) -> None:
    result = CliRunner().invoke(app, ["solve", str(problem), "--model", str(tiny_model), "--strategy", strategy,
                                      "--scorer", "rules", "-K", "2", "-N", "2", "--json"],
                                obj=InterruptingBackend(SCRIPT, at=2))
    assert result.exit_code == 130, result.output
    data = json.loads(result.stdout)
    assert data["stop_reason"] == "interrupted" and data["complete"] is False
    assert data["expansions"] == 1 and data["answer"] in ("48 / 2 = 24 clips in May.",
                                                          "She sold 100 clips in May.")


def test_every_search_strategy_json_has_a_stop_reason(tiny_model: Path, problem: Path) -> None:
    for strategy in ("astar", "beam", "bon", "sc"):
        args = ["solve", str(problem), "--model", str(tiny_model), "--strategy", strategy, "-K", "2", "-N", "1",
                "--json"] + ([] if strategy == "sc" else ["--scorer", "rules"])
        result = CliRunner().invoke(app, args, obj=ScriptedBackend(SCRIPT))
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["stop_reason"] in ("done", "exhausted"), strategy


def test_think_budget_on_a_remote_engine_is_a_usage_error(tiny_model: Path, problem: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--strategy", "astar", "--think-budget", "100", "--engine", "http://127.0.0.1:9"],
                 ["--think-budget", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(["solve", str(problem), "--model", str(tiny_model), *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: --think-budget") and err.count("\n") == 1


# ---------------------------------------------------------------- direct: stop reasons, budget, loop guard


def test_direct_says_it_stopped_and_ctrl_c_keeps_the_reply_so_far() -> None:
    chat = FakeChat(replies=["<think>\nHalf of 48 is 24.\n</think>\n\n48 + 24 = \\boxed{72}"])
    done = solve_direct(chat, QUESTION, "auto", Sampling())
    assert done.stop_reason == "stop" and done.final_answer == "72" and done.thinking_cut is None
    assert done.to_json()["stop_reason"] == "stop"
    chat = FakeChat(replies=[Reply("<think>\nHalf of 48 is 24.\n</think>\n\n48 + 24 = \\boxed{72}",
                                   interrupt_after=12)])
    cut = solve_direct(chat, QUESTION, "auto", Sampling())
    assert cut.stop_reason == "interrupted" and cut.thinking.startswith("Half of 48") and cut.answer == ""


def test_direct_thinking_budget_and_loop_guard_close_the_thinking() -> None:
    chat = FakeChat(replies=["<think>\none two three four five six seven eight\n</think>\n\nDone."])
    result = solve_direct(chat, QUESTION, "auto", Sampling(), guard=Intervention(budget=3))
    assert result.thinking_cut == "budget" and chat.forced and chat.thinks_asked == [True]
    looping = "<think>\n" + "I should add the clips of April and May together now.\n\n" * 5 + "</think>\n\n72"
    chat = FakeChat(replies=[looping])
    result = solve_direct(chat, QUESTION, "auto", Sampling(), guard=Intervention())
    assert result.thinking_cut == "loop" and "going in circles" in chat.forced[0]
    assert result.to_json()["thinking_cut"] == "loop"
