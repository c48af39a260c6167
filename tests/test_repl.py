"""`qwq chat`: the REPL driven through prompt_toolkit's pipe input, piped stdin, and a real terminal."""

from __future__ import annotations

import io
import itertools
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from qwq_local.config import Sampling, load_settings
from qwq_local.errors import ContextTooLargeError, ExitCode, UsageError
from qwq_local.render.history import History, Turn
from qwq_local.dialog.messages import TurnStats
from qwq_local.render.console import Env
from qwq_local.render.repl import SlashCompleter, run_chat
from tests.fake_chat import DEFAULT_REPLY, FakeChat, Reply, pieces_of

ROOT = Path(__file__).resolve().parent.parent
CTRL_C, CTRL_D, ALT_ENTER = "\x03", "\x04", "\x1b\r"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"


@dataclass
class Chat:
    rc: int
    out: str
    err: str
    model: FakeChat
    history: History
    data_dir: Path

    def sent(self, call: int = -1) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.model.calls[call]]

    def stored(self) -> list[Turn]:
        latest = self.history.latest_id()
        return self.history.turns(latest) if latest is not None else []


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    with History(tmp_path / "history.db") as h:
        yield h


def chat(keys: str | bytes, history: History, model: FakeChat | None = None, **kw: Any) -> Chat:
    """Type `keys` into the REPL (one prompt_toolkit pipe input), Ctrl-D at the end."""
    model = model or FakeChat()
    out, err = io.StringIO(), io.StringIO()
    data_dir = history.path.parent
    with create_pipe_input() as pipe:
        if isinstance(keys, bytes):  # as a terminal sends them, whether UTF-8 or not
            pipe.send_bytes(keys + CTRL_D.encode())
        else:
            pipe.send_text(keys + CTRL_D)
        env = Env(stdin=io.StringIO(), stdout=out, stderr=err, stdin_isatty=True, stdout_isatty=True,
                  data_dir=data_dir, prompt_input=pipe, prompt_output=DummyOutput())
        rc = run_chat(model, load_settings(), env, history, **kw)
    return Chat(rc, out.getvalue(), err.getvalue(), model, history, data_dir)


def piped(lines: str, history: History, model: FakeChat | None = None, **kw: Any) -> Chat:
    model = model or FakeChat()
    out, err = io.StringIO(), io.StringIO()
    env = Env(stdin=io.StringIO(lines), stdout=out, stderr=err, data_dir=history.path.parent)
    rc = run_chat(model, load_settings(), env, history, **kw)
    return Chat(rc, out.getvalue(), err.getvalue(), model, history, history.path.parent)


# --- a turn --------------------------------------------------------------------------------------


def test_question_streams_answer_folded_thinking_and_status(history: History) -> None:
    c = chat("What is 6*7?\r", history)
    assert c.rc == ExitCode.OK
    lines = c.out.splitlines()
    assert lines[0].startswith("qwq chat · fake-chat · ctx 4,096")
    assert lines[1].startswith("▸ Thought for ") and lines[1].endswith(" s · 11 tokens  (/think to open)")
    assert lines[2] == "The answer is 42."
    assert lines[3].startswith("thinking 11 · answer 9 tok · ") and lines[3].endswith("ctx 32/4,096")
    assert "Let me think" not in c.out  # folded: no escape codes here, so it was never streamed
    assert "\x1b" not in c.out + c.err
    [turn] = c.stored()
    assert (turn.prompt, turn.thinking, turn.answer, turn.model) == (
        "What is 6*7?", "Let me think about it.", "The answer is 42.", "fake-chat")
    assert (turn.thinking_tokens, turn.answer_tokens, turn.stop_reason, turn.strategy) == (11, 9, "eos", "direct")
    assert c.model.samplings == [Sampling()]


def test_model_sees_only_final_answers_of_earlier_turns(history: History) -> None:
    c = chat("first\rsecond\r", history)
    assert c.sent(0) == [("user", "first")]
    assert c.sent(1) == [("user", "first"), ("assistant", "The answer is 42."), ("user", "second")]
    assert not any("think" in content for _, content in c.sent(1))
    assert [t.idx for t in c.stored()] == [1, 2]


def test_think_opens_the_folded_thinking(history: History) -> None:
    model = FakeChat(replies=["<think>\nfirst reasoning\n</think>\n\nA", "<think>\nsecond reasoning\n</think>\n\nB"])
    c = chat("q1\rq2\r/think\r/think 1\r/think 7\r/think x\r", history, model)
    after = c.out.split("B\n", 1)[1]
    assert "▾ Thinking of turn 2 · 4 tokens\nsecond reasoning\n" in after
    assert "▾ Thinking of turn 1 · 4 tokens\nfirst reasoning\n" in after
    assert "error: no turn 7; this conversation has turns 1..2" in c.err
    assert "usage: /think [N]" in c.err


def test_show_thinking_keeps_it_open(history: History) -> None:
    c = chat("q\r", history, show_thinking=True)
    assert "Let me think about it.\n▸ Thought for " in c.out
    assert "(/think to open)" not in c.out


def test_hide_thinking_never_prints_it(history: History) -> None:
    c = chat("q\r", history, hide_thinking=True)
    assert "Let me think" not in c.out and "The answer is 42." in c.out


def test_show_and_hide_together_is_a_usage_error(history: History) -> None:
    with pytest.raises(UsageError):
        chat("", history, show_thinking=True, hide_thinking=True)


def test_model_that_does_not_think(history: History) -> None:
    model = FakeChat(thinks=False, replies=["Hello there."])
    c = chat("hi\r", history, model)
    assert "Thought for" not in c.out and "\nHello there.\nanswer 4 tok · " in c.out
    assert c.stored()[0].thinking == ""


def test_reply_that_ends_inside_its_thinking_still_folds(history: History) -> None:
    model = FakeChat(replies=["<think>\nstill thinking when the token limit hit"])
    c = chat("q\r/think\r", history, model)
    assert "▸ Thought for " in c.out and "(interrupted)" not in c.out
    assert c.stored()[0].thinking == "still thinking when the token limit hit"
    assert c.stored()[0].answer == ""


def test_qwq_stream_without_the_opening_tag(history: History) -> None:
    model = FakeChat(replies=["Hmm, four.\n</think>\n\n4"])
    c = chat("2+2?\r", history, model)
    assert "▸ Thought for" in c.out and "\n4\n" in c.out
    assert c.stored()[0].thinking == "Hmm, four." and c.stored()[0].answer == "4"


# --- thinking budget and loops -------------------------------------------------------------------


def test_budget_command_cuts_thinking_and_says_why(history: History) -> None:
    c = chat("/budget\r/budget 3\rq\r/budget off\rq\r/budget -2\r", history)
    assert "thinking budget: off  (/budget N, or /budget off)" in c.out
    assert "thinking budget: 3 tokens" in c.out
    assert "· thinking budget of 3 tokens reached; the model was told to answer now" in c.out
    assert len(c.model.forced) == 1 and c.model.forced[0].endswith("</think>\n\n")
    first, second = c.stored()
    forced = len(pieces_of(c.model.forced[0]))
    assert first.thinking_tokens == 3 + forced and first.answer == "The answer is 42."
    assert f"▸ Thought for 0.0 s · {3 + forced} tokens" in c.out  # the fold line counts the forced words too
    assert second.thinking_tokens == 11
    assert "usage: /budget N" in c.err


def test_think_budget_flag(history: History) -> None:
    c = chat("q\r", history, think_budget=5)
    forced = len(pieces_of(c.model.forced[0]))
    assert c.stored()[0].thinking_tokens == 5 + forced and "budget of 5 tokens" in c.out


def test_loop_guard_breaks_a_repeating_thought(history: History) -> None:
    loop = "Let me recompute the sum of the first two terms again.\n\n" * 6
    model = FakeChat(replies=[f"<think>\n{loop}</think>\n\nDone."])
    c = chat("q\r", history, model)
    assert "· thinking loop detected (a paragraph repeated 3 times); the model was told to answer now" in c.out
    assert "Done." in c.out


# --- Ctrl-C, Ctrl-D, editing -----------------------------------------------------------------------


def test_ctrl_c_while_generating_keeps_the_conversation(history: History) -> None:
    model = FakeChat(replies=["<think>\nfirst thought\n</think>\n\nAnswer one.", Reply(DEFAULT_REPLY, interrupt_after=5),
                              Reply("<think>\nok\n</think>\n\nPartial answer here", interrupt_after=9)])
    c = chat("one\rtwo\rthree\rfour\r", history, model)
    assert c.rc == ExitCode.OK
    assert model.closed == 2
    assert "(interrupted)" in c.out and "stopped: interrupted" in c.out
    turns = c.stored()
    assert [t.stop_reason for t in turns] == ["eos", "interrupted", "interrupted", "eos"]
    assert turns[1].answer == "" and turns[1].thinking == "Let me"
    assert turns[2].answer == "Partial answer"
    # the turn interrupted before any answer is not sent; the partial answer is
    assert c.sent(3) == [("user", "one"), ("assistant", "Answer one."), ("user", "three"),
                         ("assistant", "Partial answer"), ("user", "four")]
    assert "interrupted" in c.out.split("/stats", 1)[0]


def test_ctrl_c_at_the_prompt_clears_the_line(history: History) -> None:
    c = chat("half typed" + CTRL_C + "real question\r", history)
    assert [m[1] for m in c.sent()] == ["real question"]


def test_ctrl_d_exits(history: History) -> None:
    c = chat("", history)
    assert c.rc == ExitCode.OK and c.model.calls == []


def test_exit_command(history: History) -> None:
    c = chat("/exit\rnot sent\r", history)
    assert c.rc == ExitCode.OK and c.model.calls == []


def test_alt_enter_inserts_a_newline(history: History) -> None:
    c = chat("line one" + ALT_ENTER + "line two\r", history)
    assert c.sent() == [("user", "line one\nline two")]


def test_bracketed_paste_stays_one_message(history: History) -> None:
    c = chat(PASTE_START + "first line\nsecond line\r\nthird" + PASTE_END + "\r", history)
    assert c.sent() == [("user", "first line\nsecond line\nthird")]


def test_typed_lines_go_to_the_prompt_history_file(history: History) -> None:
    c = chat("remember me\r/stats\r", history)
    text = (c.data_dir / "repl_history").read_text()
    assert "+remember me" in text and "+/stats" in text


def test_slash_commands_complete() -> None:
    def complete(text: str) -> list[str]:
        return [c.text for c in SlashCompleter().get_completions(Document(text), CompleteEvent())]

    assert complete("/th") == ["/think"]
    assert "/search" in complete("/")
    assert complete("/search a") == ["astar"]
    assert complete("/search ") == ["direct", "astar", "beam", "bon", "sc"]
    assert complete("hello /th") == []


def test_unknown_command_and_slash_questions(history: History) -> None:
    c = chat("/frobnicate\r/usr/bin is what?\r", history)
    assert "error: unknown command /frobnicate; /help lists them" in c.err
    assert c.sent() == [("user", "/usr/bin is what?")]


# --- other commands -------------------------------------------------------------------------------


def test_help_lists_every_command(history: History) -> None:
    c = chat("/help\r", history)
    for name in ("/help", "/think [N]", "/search STRATEGY", "/budget N|off", "/ctx", "/model", "/reset",
                 "/save PATH", "/stats", "/exit"):
        assert name in c.out


def test_ctx_model_and_stats(history: History) -> None:
    c = chat("/ctx\rq\r/ctx\r/model\r/stats\r", history)
    assert "context: not measured yet · size 4,096 tokens" in c.out
    assert "context: 25 / 4,096 tokens (1%)" in c.out
    assert "fake-chat · ctx 4,096 · thinks · temperature 0.6 · top_p 0.95 · top_k 40" in c.out
    assert "1 turns · thinking 11 tok · answer 9 tok · " in c.out


def test_reset_starts_a_new_conversation(history: History) -> None:
    c = chat("q1\r/reset\rq2\r", history)
    assert c.model.resets == 1
    assert c.sent() == [("user", "q2")]
    assert len(history.conversations()) == 2


def test_save_writes_a_markdown_transcript_atomically(history: History, tmp_path: Path) -> None:
    target = tmp_path / "out" / "chat.md"
    target.parent.mkdir()
    c = chat(f"What is 6*7?\r/save {target}\r/save {tmp_path}\r/save\r", history)
    text = target.read_text()
    assert text.startswith("# What is 6*7?\n") and "## 1. Assistant\n\nThe answer is 42." in text
    assert "<summary>Thinking (11 tokens)</summary>" in text
    assert sorted(p.name for p in target.parent.iterdir()) == ["chat.md"]  # no temporary file left
    assert f"saved 1 turns to {target}" in c.out
    assert f"error: cannot save to {tmp_path}" in c.err and "usage: /save PATH" in c.err


def test_save_to_a_path_that_cannot_be_is_an_error_and_the_chat_goes_on(history: History) -> None:
    c = piped("q1\n/save a\x00b\n/save ~no-such-user-qwq/x.md\nq2\n", history, each_line=True)
    assert c.rc == ExitCode.OK and "Traceback" not in c.err
    assert c.err.count("error: cannot save to") == 2
    assert [t.prompt for t in c.stored()] == ["q1", "q2"]


def test_a_typed_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(history: History) -> None:
    c = chat(b"caf\xe9\rq2\r", history)  # a stray byte (Alt+key on an 8-bit terminal)
    assert c.rc == ExitCode.OK and "not UTF-8" in c.err
    assert [t.prompt for t in c.stored()] == ["q2"] and len(c.model.calls) == 1


def test_a_full_disk_under_the_prompt_history_is_one_warning(history: History,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from prompt_toolkit.history import FileHistory

    def full(self: Any, string: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FileHistory, "store_string", full)
    c = chat("q1\rq2\r", history)
    assert c.rc == ExitCode.OK and "Unhandled exception" not in c.out + c.err
    assert c.err.count("prompt history not kept from here on: No space left on device") == 1
    assert [t.prompt for t in c.stored()] == ["q1", "q2"]


# --- search strategies ----------------------------------------------------------------------------


def test_search_strategy_runs_the_runner_and_folds_the_tree(history: History) -> None:
    calls: list[tuple[str, str, list]] = []

    def runner(question: str, strategy: str, earlier: list) -> tuple[str, TurnStats, str]:
        calls.append((question, strategy, [(m.role, m.content) for m in earlier]))
        stats = TurnStats(thinking_tokens=30, answer_tokens=3, seconds=2.0, thinking_seconds=1.5, ctx_used=99)
        return "<think>\nsearched steps\n</think>\n\n\\boxed{42}", stats, "17 nodes, 3 answers\nroot -> a -> b"

    c = chat("q1\r/search astar\rWhat is 6*7?\r/tree\r/search direct\rq2\r", history, strategy_runner=runner)
    answer1 = c.stored()[0].answer
    assert calls == [("What is 6*7?", "astar", [("user", "q1"), ("assistant", answer1)])]  # the conversation too
    assert "strategy for the next turns: astar" in c.out
    assert "▸ Thought for 1.5 s · 30 tokens  (/think to open)" in c.out
    assert "▸ astar: 17 nodes, 3 answers  (/tree to open)" in c.out
    assert "\\boxed{42}\n" in c.out and "root -> a -> b" in c.out
    _, first, second = c.stored()
    assert (first.strategy, first.answer, first.thinking) == ("astar", "\\boxed{42}", "searched steps")
    assert second.strategy == "direct" and len(c.model.calls) == 2
    assert c.sent()[-3:] == [("user", "What is 6*7?"), ("assistant", "\\boxed{42}"), ("user", "q2")]


def test_a_searched_reply_without_thinking_tags_is_all_answer(history: History) -> None:
    def runner(question: str, strategy: str, earlier: list) -> tuple[str, TurnStats, str]:
        return "The answer is \\boxed{7}.", TurnStats(answer_tokens=6, seconds=1.0), "2 nodes"

    c = chat("/search bon\rq\r", history, strategy_runner=runner, think_budget=50)
    assert c.model.thinks
    (turn,) = c.stored()
    assert (turn.answer, turn.thinking) == ("The answer is \\boxed{7}.", "")


def test_search_without_a_runner_is_refused(history: History) -> None:
    c = chat("/search beam\r/search nope\r/search\rq\r", history)
    assert "search strategies are not available in this session" in c.err
    assert "unknown strategy 'nope'" in c.err
    assert "strategy: direct" in c.out
    assert len(c.model.calls) == 1


# --- history ----------------------------------------------------------------------------------


def test_resume_loads_the_conversation(history: History) -> None:
    cid = history.add_turn(None, Turn(prompt="old q", thinking="old thinking", answer="old a", model="m")).conversation_id
    assert cid is not None
    c = chat("new q\r/think 1\r", history, resume=cid)
    assert "resumed conversation" in c.out
    assert c.sent() == [("user", "old q"), ("assistant", "old a"), ("user", "new q")]
    assert [t.prompt for t in history.turns(cid)] == ["old q", "new q"]
    assert "old thinking" in c.out


def test_resume_of_an_unknown_conversation(history: History) -> None:
    with pytest.raises(UsageError, match="no conversation 99"):
        chat("", history, resume=99)


def test_full_disk_warns_once_and_the_chat_goes_on(history: History) -> None:
    history.add_turn(None, Turn(prompt="warm up"))
    pages = history._conn.execute("PRAGMA page_count").fetchone()[0]
    history._conn.execute(f"PRAGMA max_page_count = {pages}")
    thought = " ".join(f"thought{i}" for i in range(5000))  # varied: the loop guard stays quiet
    model = FakeChat(default=f"<think>\n{thought}</think>\n\nA")
    c = chat("q1\rq2\r/think 2\r", history, model)
    assert c.err.count("warning: history not saved: the disk is full") == 1
    assert c.out.count("\nA\n") == 2 and "thought4999" in c.out


def test_ctrl_c_before_the_first_piece(history: History) -> None:
    class SlowStart(FakeChat):
        def stream(self, messages, sampling, *, intervene=None):  # type: ignore[no-untyped-def]
            if not self.calls:
                self.calls.append(messages)
                raise KeyboardInterrupt  # while the engine evaluates the prompt
            return super().stream(messages, sampling, intervene=intervene)

    c = chat("q1\rq2\r", history, SlowStart())
    assert [t.stop_reason for t in c.stored()] == ["interrupted", "eos"]
    assert "stopped: interrupted" in c.out and "The answer is 42." in c.out


def test_an_engine_error_mid_reply_ends_the_turn_not_the_chat(history: History) -> None:
    class FailsMidway(FakeChat):
        def stream(self, messages, sampling, *, intervene=None):  # type: ignore[no-untyped-def]
            pieces = super().stream(messages, sampling, intervene=intervene)
            if len(self.calls) > 1:
                return pieces

            def broken():  # type: ignore[no-untyped-def]
                yield from itertools.islice(pieces, 15)
                raise ContextTooLargeError("context full")

            return broken()

    c = chat("q1\rq2\r", history, FailsMidway())
    assert "error: context full" in c.err
    assert "\nThe\n▸ Thought for" in c.out  # the partial answer's line was ended
    assert [t.prompt for t in c.stored()] == ["q2"]


def test_an_engine_error_ends_the_turn_not_the_chat(history: History) -> None:
    class Failing(FakeChat):
        def stream(self, messages, sampling, *, intervene=None):  # type: ignore[no-untyped-def]
            if len(self.calls) == 0:
                self.calls.append(messages)
                raise ContextTooLargeError("the conversation no longer fits in 4,096 tokens; /reset")
            return super().stream(messages, sampling, intervene=intervene)

    c = chat("q1\rq2\r", history, Failing())
    assert "error: the conversation no longer fits in 4,096 tokens; /reset" in c.err
    assert "The answer is 42." in c.out and c.rc == ExitCode.OK


# --- piped stdin --------------------------------------------------------------------------------


def test_piped_stdin_answers_each_line(history: History) -> None:
    c = piped("What is 6*7?\n\nAnd again?\n", history, each_line=True)
    assert c.rc == ExitCode.OK
    assert c.out == "The answer is 42.\nThe answer is 42.\n"  # stdout holds the answers alone
    assert c.err.count("▸ Thought for") == 2 and c.err.count("thinking 11 · answer 9 tok") == 2
    assert c.sent(1) == [("user", "What is 6*7?"), ("assistant", "The answer is 42."), ("user", "And again?")]
    assert len(c.stored()) == 2
    assert "\x1b" not in c.out + c.err


def test_piped_stdin_is_one_message_as_ollama_run_sends_a_file(history: History) -> None:
    c = piped("/system Be brief.\n\nSummarise this file:\n\nline one\n/not a command here\nline three\n", history)
    assert c.rc == ExitCode.OK and len(c.model.calls) == 1
    assert c.sent(0) == [("system", "Be brief."),
                         ("user", "Summarise this file:\n\nline one\n/not a command here\nline three")]
    assert c.out == "The answer is 42.\n" and len(c.stored()) == 1


def test_piped_stdin_that_is_empty_or_not_utf8_is_exit_4(history: History) -> None:
    for data in (" \n\n", "caf\udce9\n"):
        c = piped(data, history)
        assert c.rc == ExitCode.EMPTY_INPUT and c.err.count("\n") == 1 and c.err.startswith("error: standard input")
        assert c.model.calls == []


def test_piped_whole_input_interrupted_is_130(history: History) -> None:
    c = piped("q1\nq2\n", history, FakeChat(replies=[Reply(DEFAULT_REPLY, interrupt_after=3)]))
    assert c.rc == ExitCode.INTERRUPTED and c.sent(0) == [("user", "q1\nq2")]


def test_piped_stdin_runs_commands(history: History, tmp_path: Path) -> None:
    c = piped(f"/budget 2\nq\n/save {tmp_path / 't.md'}\n/exit\nnever\n", history, each_line=True)
    assert len(c.model.calls) == 1 and c.stored()[0].thinking_tokens == 2 + len(pieces_of(c.model.forced[0]))
    assert (tmp_path / "t.md").exists()


def test_piped_interrupt_stops_with_130(history: History) -> None:
    c = piped("q1\nq2\n", history, FakeChat(replies=[Reply(DEFAULT_REPLY, interrupt_after=3)]), each_line=True)
    assert c.rc == ExitCode.INTERRUPTED and len(c.model.calls) == 1
    assert c.stored()[0].stop_reason == "interrupted"


def test_piped_engine_error_sets_the_exit_code(history: History) -> None:
    class Failing(FakeChat):
        def stream(self, messages, sampling, *, intervene=None):  # type: ignore[no-untyped-def]
            raise ContextTooLargeError("too long")

    c = piped("q1\nq2\n", history, Failing(), each_line=True)
    assert c.rc == ExitCode.CONTEXT_TOO_LARGE and c.err.count("error: too long") == 2


# --- a real terminal -------------------------------------------------------------------------------


def _fake_chat_command(tmp_path: Path, **env: str) -> tuple[list[str], dict[str, str]]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "QWQ_USER_PATH": str(tmp_path), "TERM": "xterm-256color", **env}
    environ.pop("NO_COLOR", None)
    return [sys.executable, "-m", "tests.fake_chat"], environ


@pytest.mark.slow
def test_real_terminal_session_with_pexpect(tmp_path: Path, spawn_terminal: Callable[..., Any]) -> None:
    pexpect = pytest.importorskip("pexpect")
    # pexpect is no terminal emulator: without NO_CPR prompt_toolkit waits ~2 s per prompt for a cursor report
    argv, environ = _fake_chat_command(tmp_path, FAKE_CHAT_SLOW="0.003", PROMPT_TOOLKIT_NO_CPR="1")
    child = spawn_terminal(argv[0], argv[1:], env=environ, cwd=str(ROOT), dimensions=(30, 100),
                          encoding="utf-8", timeout=20)
    try:
        child.expect_exact("Ctrl-D exits")
        child.expect_exact(">>>")  # type only once the prompt is up, as a person would
        time.sleep(0.3)
        child.send("What is 6*7?\r")
        child.expect_exact("Step 3")  # thinking streams while it happens
        child.expect_exact("Thought for")
        child.expect_exact("The answer is 42.")
        child.expect_exact("tok/s")
        child.send("second\r")
        child.expect_exact("Step 2")
        child.sendintr()  # Ctrl-C while generating: back to the prompt
        child.expect_exact("interrupted")
        child.expect_exact(">>>")
        time.sleep(0.3)
        child.send("/think 1\r")
        child.expect_exact("Step 40: consider case 40")
        child.send(CTRL_D)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    with History(tmp_path / "history.db") as h:
        turns = h.turns(h.latest_id() or 0)
    assert [t.stop_reason for t in turns] == ["eos", "interrupted"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_real_terminal_folds_the_streamed_thinking_away(tmp_path: Path) -> None:
    argv, environ = _fake_chat_command(tmp_path)
    session = f"qwq-test-{os.getpid()}"
    keep = ("PYTHONPATH", "QWQ_USER_PATH", "TERM", "PATH")
    cmd = shlex.join(["env", *(f"{k}={environ[k]}" for k in keep if k in environ), *argv])

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True, cwd=ROOT).stdout

    def screen_when(text: str) -> str:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            shown = tmux("capture-pane", "-p", "-t", session)
            if text in shown:
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared:\n{shown}")

    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", "-c", str(ROOT), cmd)
    try:
        screen_when("Ctrl-D exits")
        tmux("send-keys", "-t", session, "What is 6*7?", "Enter")
        shown = screen_when("tok/s")
        lines = [ln for ln in shown.splitlines() if ln.strip()]
        at = next(i for i, ln in enumerate(lines) if ln.startswith(">>> What is 6*7?"))
        assert lines[at + 1].startswith("▸ Thought for ") and "(/think to open)" in lines[at + 1]
        assert lines[at + 2] == "The answer is 42."
        assert "Step" not in shown  # the streamed thinking was erased
        tmux("send-keys", "-t", session, "/think", "Enter")
        assert "Step 40: consider case 40" in screen_when("Step 40")
        tmux("send-keys", "-t", session, "C-d")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)


def test_system_command_sets_and_clears_the_system_prompt(history: History) -> None:
    c = piped("/system Answer in French.\nHello\n/system off\nAgain\n", history, FakeChat(replies=["Bonjour", "Hi"]),
              each_line=True)
    assert c.sent(0)[0] == ("system", "Answer in French.") and c.sent(0)[-1] == ("user", "Hello")
    assert all(role != "system" for role, _ in c.sent(1)) and c.sent(1)[-1] == ("user", "Again")
