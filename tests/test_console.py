"""Console output: plain text off a tty or with NO_COLOR, folding that really erases on a tty."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path

import pytest
from prompt_toolkit.utils import get_cwidth

from qwq_local.dialog.messages import TurnStats
from qwq_local.render.console import (
    Env,
    ReplyView,
    RowCounter,
    fold_line,
    spinner_line,
    status_line,
    tree_line,
    wrap_rows,
    write,
)

ESC = "\x1b"


class TtyIO(io.StringIO):
    def isatty(self) -> bool:
        return True


class Screen:
    """A tiny terminal: the escape codes ReplyView uses, deferred wrap, scrolling without scrollback."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.rows = [[" "] * width for _ in range(height)]
        self.row = self.col = 0

    def feed(self, data: str) -> Screen:
        for token in re.findall(r"\x1b\[[0-9;]*[A-Za-z]|.|\n", data, flags=re.DOTALL):
            if token.startswith(ESC):
                self._csi(token)
            elif token == "\r":
                self.col = 0
            elif token == "\n":
                self._down()
            else:
                self._put(token)
        return self

    def _down(self) -> None:
        self.col = 0
        if self.row == self.height - 1:
            self.rows.pop(0)
            self.rows.append([" "] * self.width)
        else:
            self.row += 1

    def _put(self, ch: str) -> None:
        w = get_cwidth(ch)
        if self.col + w > self.width:
            self._down()
        self.rows[self.row][self.col] = ch
        for extra in range(1, w):
            self.rows[self.row][self.col + extra] = ""
        self.col += w

    def _csi(self, token: str) -> None:
        arg, op = token[2:-1], token[-1]
        if op == "A":
            self.row = max(0, self.row - int(arg or 1))
            self.col = min(self.col, self.width - 1)
        elif op == "J":
            self.rows[self.row][self.col :] = [" "] * (self.width - self.col)
            for r in range(self.row + 1, self.height):
                self.rows[r] = [" "] * self.width
        elif op == "K" and arg == "2":
            self.rows[self.row] = [" "] * self.width
        elif op != "m":
            raise AssertionError(f"unexpected escape {token!r}")

    def text(self) -> list[str]:
        lines = ["".join(r).rstrip() for r in self.rows]
        while lines and not lines[-1]:
            lines.pop()
        return lines


def tty_env(width: int = 40, height: int = 12, colors: bool = True) -> tuple[Env, TtyIO]:
    out = TtyIO()
    ticks = itertools.count()
    env = Env(
        stdin=io.StringIO(), stdout=out, stderr=io.StringIO(), stdin_isatty=True, stdout_isatty=True,
        colors=colors, cursor=True, size=lambda: (width, height), clock=lambda: float(next(ticks)),
    )
    return env, out


def plain_env() -> tuple[Env, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Env(stdin=io.StringIO(), stdout=out, stderr=err), out, err


STATS = TurnStats(prompt_tokens=50, thinking_tokens=845, answer_tokens=120, seconds=41.2,
                  thinking_seconds=12.3, ctx_used=1234, n_ctx=8192)


def reply(view: ReplyView, thinking: list[str], answer: list[str]) -> None:
    for n, piece in enumerate(thinking, start=1):
        view.thinking(piece, n)
    view.end_thinking(12.3, len(thinking))
    for piece in answer:
        view.answer(piece)
    view.finish(STATS)


# --- formatting -------------------------------------------------------------------------------


def test_fold_line_format() -> None:
    assert fold_line(12.34, 845) == "▸ Thought for 12.3 s · 845 tokens  (/think to open)"
    assert fold_line(1, 2_000, hint=False, interrupted=True) == "▸ Thought for 1.0 s · 2,000 tokens (interrupted)"


def test_status_line_format() -> None:
    assert status_line(STATS) == "thinking 845 · answer 120 tok · 23.4 tok/s · 41.2 s · ctx 1,234/8,192"
    no_thinking = TurnStats(answer_tokens=10, seconds=2.0, ctx_used=30, stop_reason="length")
    assert status_line(no_thinking, n_ctx=512) == "answer 10 tok · 5.0 tok/s · 2.0 s · ctx 30/512 · stopped: length"


def test_spinner_and_tree_lines() -> None:
    assert spinner_line(0, 1234) == "⠋ thinking… 1,234 tokens"
    assert tree_line("astar", "12 nodes, 3 answers\nnode 1 ...") == "▸ astar: 12 nodes, 3 answers  (/tree to open)"
    assert tree_line("bon", "4 samples") == "▸ bon: 4 samples"


def test_rows_follow_terminal_wrapping() -> None:
    counter = RowCounter(10)
    counter.add("x" * 10)  # fills the row exactly: the cursor waits at its end (deferred wrap)
    assert (counter.rows, counter.col) == (0, 10)
    counter.add("y")
    assert (counter.rows, counter.col) == (1, 1)
    counter.add("\n" + "思" * 5 + "思")  # wide characters take two columns
    assert counter.rows == 3
    assert wrap_rows("abcdefghijk\n思思思思思思", 10) == ["abcdefghij", "k", "思思思思思", "思"]


# --- plain output (not a tty, NO_COLOR) ---------------------------------------------------------


def test_non_tty_output_is_plain_and_answers_alone_on_stdout() -> None:
    env, out, err = plain_env()
    reply(ReplyView(env), ["\n", "Let me ", "see."], ["\n\n", "The answer", " is 4."])
    assert out.getvalue() == "The answer is 4.\n"
    assert err.getvalue() == (
        "▸ Thought for 12.3 s · 3 tokens  (/think to open)\n"
        "thinking 845 · answer 120 tok · 23.4 tok/s · 41.2 s · ctx 1,234/8,192\n"
    )
    assert ESC not in out.getvalue() + err.getvalue()


@pytest.mark.parametrize("mode", ["fold", "show", "hide"])
def test_no_escape_codes_off_a_tty_in_any_mode(mode: str) -> None:
    env, out, err = plain_env()
    reply(ReplyView(env, mode), ["a\n"] * 50, ["b"])  # type: ignore[arg-type]
    assert ESC not in out.getvalue() + err.getvalue()
    if mode == "show":
        assert err.getvalue().startswith("a\na\n")


def test_no_color_env_means_no_colour_codes() -> None:
    stdout = TtyIO()
    env = Env.from_process({"NO_COLOR": "1", "TERM": "xterm"}, stdin=io.StringIO(), stdout=stdout, stderr=TtyIO())
    assert env.stdout_isatty and not env.colors and env.cursor
    reply(ReplyView(env, "show"), ["thinking\n"], ["answer"])
    assert "\x1b[" not in stdout.getvalue()


def test_environment_decides_colours() -> None:
    tty, pipe = TtyIO(), io.StringIO()
    assert Env.from_process({"TERM": "xterm"}, stdin=pipe, stdout=tty, stderr=tty).colors
    assert not Env.from_process({"TERM": "dumb"}, stdin=pipe, stdout=tty, stderr=tty).cursor
    piped = Env.from_process({"TERM": "xterm"}, stdin=pipe, stdout=pipe, stderr=tty)
    assert not piped.colors and not piped.cursor and not piped.stdin_isatty and piped.chrome is tty


def test_user_data_dir_comes_from_the_environment(tmp_path: Path) -> None:
    env = Env.from_process({"QWQ_USER_PATH": str(tmp_path)}, stdin=io.StringIO(), stdout=io.StringIO())
    assert env.data_dir == tmp_path


def test_unencodable_characters_degrade() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    write(stream, "▸ Thought")
    assert raw.getvalue() == b"? Thought"


# --- folding on a tty ---------------------------------------------------------------------------


def test_thinking_streams_dim_then_folds_away() -> None:
    env, out = tty_env(width=20, height=12)
    view = ReplyView(env)
    for n, piece in enumerate(["\nFirst line of thought\n", "second 思思思思思思思思思思思 line", "\nthird"], 1):
        view.thinking(piece, n)
    assert "\x1b[2mFirst line of thought" in out.getvalue()
    during = Screen(20, 12).feed(">>> q\n" + out.getvalue()).text()
    assert during[1] == "First line of though" and during[2] == "t"
    view.end_thinking(3.0, 7)
    view.answer("\n\nForty-two.")
    view.finish(STATS)
    assert Screen(20, 12).feed(">>> q\n" + out.getvalue()).text() == [
        ">>> q",
        "▸ Thought for 3.0 s",
        "· 7 tokens  (/think",
        "to open)",
        "Forty-two.",
        "thinking 845 · answe",
        "r 120 tok · 23.4 tok",
        "/s · 41.2 s · ctx 1,",
        "234/8,192",
    ]


def test_thinking_longer_than_the_screen_keeps_a_window_and_still_folds() -> None:
    env, out = tty_env(width=30, height=8)
    view = ReplyView(env)
    for n in range(1, 41):
        view.thinking(f"step {n} of a long thought\n", n)
        screen = Screen(30, 8).feed(">>> q\n" + out.getvalue())
        assert screen.text()[0] == ">>> q"  # the prompt never scrolls away
    assert "step 40 of a long thought" in Screen(30, 8).feed(">>> q\n" + out.getvalue()).text()
    view.end_thinking(9.9, 40)
    view.answer("done")
    view.finish(None)
    assert Screen(30, 8).feed(">>> q\n" + out.getvalue()).text() == [
        ">>> q",
        "▸ Thought for 9.9 s · 40 token",
        "s  (/think to open)",
        "done",
    ]


def test_hide_mode_shows_a_spinner_with_the_count_only() -> None:
    env, out = tty_env(width=40)
    view = ReplyView(env, "hide")
    for n in range(1, 6):
        view.thinking(f"secret {n} ", n)
    assert "secret" not in out.getvalue()
    [line] = Screen(40, 12).feed(out.getvalue()).text()
    assert re.fullmatch(r"[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] thinking… 5 tokens", line)
    view.end_thinking(1.0, 5)
    view.answer("A")
    view.finish(None)
    assert Screen(40, 12).feed(out.getvalue()).text() == ["▸ Thought for 1.0 s · 5 tokens  (/think", "to open)", "A"]


def test_show_mode_keeps_the_thinking() -> None:
    env, out = tty_env(width=60, colors=False)
    reply(ReplyView(env, "show"), ["I think\n", "so"], ["Yes"])
    assert Screen(60, 12).feed(out.getvalue()).text()[:4] == [
        "I think", "so", "▸ Thought for 12.3 s · 2 tokens", "Yes",
    ]


def test_interrupted_thinking_folds_with_a_mark() -> None:
    env, out = tty_env(width=80, colors=False)
    view = ReplyView(env)
    view.thinking("half a thought", 3)
    view.end_thinking(0.5, interrupted=True)
    view.finish(None)
    assert Screen(80, 12).feed(out.getvalue()).text() == [
        "▸ Thought for 0.5 s · 3 tokens (interrupted)  (/think to open)"
    ]


def test_note_after_the_fold() -> None:
    env, _, err = plain_env()
    view = ReplyView(env)
    view.thinking("x", 1)
    view.end_thinking(1.0, 100, note="thinking budget of 100 tokens reached; the model was told to answer now")
    assert err.getvalue().splitlines()[1] == "· thinking budget of 100 tokens reached; the model was told to answer now"


def test_reply_without_thinking_has_no_fold_line() -> None:
    env, out, err = plain_env()
    view = ReplyView(env)
    view.end_thinking(0.0, 0)
    view.answer("Hello")
    view.finish(None)
    assert (out.getvalue(), err.getvalue()) == ("Hello\n", "")
