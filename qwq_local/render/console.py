"""Console output through an injected `Env`: streamed dim thinking that folds, status lines, spinner.

Escape codes: colours and dim only when `env.colors` (a tty, no NO_COLOR, TERM not dumb); cursor
movement (erasing streamed thinking, redrawing the spinner) only when `env.cursor` (a tty, TERM not
dumb). With output that is not a tty nothing but plain text is written, and the chrome (thinking,
folded line, status) goes to stderr so that stdout holds the answers alone.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from prompt_toolkit.utils import get_cwidth

from qwq_local.config import user_data_dir
from qwq_local.dialog.messages import TurnStats

DIM, BOLD, YELLOW, RED, RESET = "\x1b[2m", "\x1b[1m", "\x1b[33m", "\x1b[31m", "\x1b[0m"
UP, CLEAR_DOWN, CLEAR_LINE = "\x1b[{}A", "\x1b[J", "\x1b[2K"
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
REDRAW_SECONDS = 0.1

ThinkingMode = Literal["fold", "show", "hide"]


@dataclass
class Env:
    """Everything the REPL touches outside itself; tests build one around StringIO."""

    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    stdin_isatty: bool = False
    stdout_isatty: bool = False
    stderr_isatty: bool = False
    colors: bool = False
    cursor: bool = False  # cursor movement allowed (a real terminal)
    data_dir: Path = field(default_factory=user_data_dir)
    size: Callable[[], tuple[int, int]] = lambda: (80, 24)  # (columns, rows)
    clock: Callable[[], float] = time.monotonic
    prompt_input: Any = None  # a prompt_toolkit Input; None means the real terminal
    prompt_output: Any = None  # a prompt_toolkit Output; None means the real terminal

    @classmethod
    def from_process(
        cls,
        environ: Mapping[str, str] = os.environ,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> Env:
        """The real process (or the given streams): isatty, NO_COLOR and TERM decide the output."""
        stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
        out_tty = stdout.isatty()
        smart = environ.get("TERM", "") != "dumb"
        return cls(
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            stdin_isatty=stdin.isatty(),
            stdout_isatty=out_tty,
            stderr_isatty=stderr.isatty(),
            colors=out_tty and smart and not environ.get("NO_COLOR"),
            cursor=out_tty and smart,
            data_dir=user_data_dir(environ),
            size=_terminal_size,
        )

    @property
    def chrome(self) -> TextIO:
        """Where thinking, folded lines and status go: the terminal, else stderr."""
        return self.stdout if self.stdout_isatty else self.stderr


def _terminal_size() -> tuple[int, int]:
    size = shutil.get_terminal_size((80, 24))
    return size.columns, size.lines


def write(stream: TextIO, text: str) -> None:
    """Write and flush, degrading characters the stream's encoding cannot hold."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "replace").decode(encoding))
    stream.flush()


def style(env: Env, text: str, code: str) -> str:
    return f"{code}{text}{RESET}" if env.colors and text else text


def info(env: Env, text: str) -> None:
    """A dim one-line note (chrome)."""
    write(env.chrome, style(env, text, DIM) + "\n")


def warn(env: Env, text: str) -> None:
    write(env.stderr, style(env, f"warning: {text}", YELLOW) + "\n")


def error(env: Env, text: str) -> None:
    write(env.stderr, style(env, f"error: {text}", RED) + "\n")


# --- pure formatting ------------------------------------------------------------------------


def fold_line(seconds: float, tokens: int, *, hint: bool = True, interrupted: bool = False) -> str:
    """`▸ Thought for 12.3 s · 845 tokens  (/think to open)`."""
    line = f"▸ Thought for {seconds:.1f} s · {tokens:,} tokens"
    if interrupted:
        line += " (interrupted)"
    return line + ("  (/think to open)" if hint else "")


def status_line(stats: TurnStats, n_ctx: int | None = None) -> str:
    """`thinking 845 · answer 120 tok · 23.4 tok/s · 41.2 s · ctx 1,234/8,192`."""
    parts = []
    if stats.thinking_tokens:
        parts.append(f"thinking {stats.thinking_tokens:,}")
    parts.append(f"answer {stats.answer_tokens:,} tok")
    generated = stats.thinking_tokens + stats.answer_tokens
    if stats.seconds > 0:
        parts.append(f"{generated / stats.seconds:.1f} tok/s")
    parts.append(f"{stats.seconds:.1f} s")
    size = stats.n_ctx or n_ctx or 0
    if size:
        parts.append(f"ctx {stats.ctx_used:,}/{size:,}")
    if stats.stop_reason != "eos":
        parts.append(f"stopped: {stats.stop_reason}")
    return " · ".join(parts)


def spinner_line(tick: int, tokens: int) -> str:
    return f"{SPINNER[tick % len(SPINNER)]} thinking… {tokens:,} tokens"


def tree_line(strategy: str, summary: str) -> str:
    """A search tree summary folded to its first line."""
    lines = summary.strip().splitlines() or [""]
    more = "  (/tree to open)" if len(lines) > 1 else ""
    return f"▸ {strategy}: {lines[0].strip()}{more}"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    """Thinking text safe to count rows of: tabs expanded later, other control characters dropped."""
    return _CONTROL.sub("", text)


def wrap_rows(text: str, width: int) -> list[str]:
    """Split text into the rows a terminal of `width` columns shows (wide characters count 2)."""
    rows: list[str] = []
    for line in text.split("\n"):
        row, col = "", 0
        for ch in line.replace("\t", "    "):
            w = get_cwidth(ch)
            if col + w > width and row:
                rows.append(row)
                row, col = "", 0
            row, col = row + ch, col + w
        rows.append(row)
    return rows


class RowCounter:
    """How many rows the cursor moved down since the region began (deferred wrap, like xterm)."""

    def __init__(self, width: int) -> None:
        self.width = max(width, 1)
        self.rows = 0
        self.col = 0

    def add(self, text: str) -> None:
        for ch in text.replace("\t", "    "):
            if ch == "\n":
                self.rows, self.col = self.rows + 1, 0
                continue
            w = get_cwidth(ch)
            if self.col + w > self.width and self.col:
                self.rows, self.col = self.rows + 1, 0
            self.col += w


# --- one streamed reply ---------------------------------------------------------------------


class ReplyView:
    """Renders one reply: thinking (streamed dim, spinner, or nothing), the fold, the answer."""

    def __init__(self, env: Env, mode: ThinkingMode = "fold") -> None:
        self.env = env
        self.mode = mode
        self.out = env.chrome
        self.thinking_text = ""
        self.tokens = 0
        self._region: RowCounter | None = None  # rows of streamed thinking on screen (tty)
        self._windowed = False  # thinking overflowed the screen: redraw its tail only
        self._spinner_shown = False
        self._dim_open = False  # streamed thinking is written inside one SGR dim run
        self._tick = 0
        self._last_draw = float("-inf")
        self._answer_started = False
        self._answer_ends_with_newline = True
        self._folded = False

    # thinking ---------------------------------------------------------------------------------

    def thinking(self, text: str, tokens: int | None = None) -> None:
        """One streamed thinking piece; `tokens` is the running thinking-token count if known."""
        self.tokens = tokens if tokens is not None else self.tokens + 1
        if not self.thinking_text:
            text = text.lstrip()
        if not text:
            return
        self.thinking_text += text
        if self.mode == "show":
            self._dim(printable(text))
        elif self.mode == "fold" and self.env.cursor:
            self._stream_folding(printable(text))
        elif self.mode == "hide" and self.env.cursor:
            self._draw_spinner()

    def _stream_folding(self, text: str) -> None:
        columns, lines = self.env.size()
        max_rows = max(lines - 2, 3)
        if self._region is None:
            self._region = RowCounter(columns)
        if not self._windowed:
            trial = copy.copy(self._region)
            trial.add(text)
            if trial.rows < max_rows:
                self._region = trial
                self._dim(text)
                return
            self._windowed = True
            self._last_draw = float("-inf")
        now = self.env.clock()
        if now - self._last_draw < REDRAW_SECONDS:
            return
        self._last_draw = now
        tail = wrap_rows(printable(self.thinking_text[-columns * max_rows * 2 :]), columns)[-(max_rows - 1) :]
        header = f"… {self.tokens:,} tokens so far"
        self._erase()
        body = header + "\n" + "\n".join(tail)
        self._region = RowCounter(columns)
        self._region.add(body)
        write(self.out, style(self.env, body, DIM))

    def _dim(self, text: str) -> None:
        """Stream dim text as one run, so the terminal shows it contiguously (and pexpect can match it)."""
        if self.env.colors and not self._dim_open:
            text, self._dim_open = DIM + text, True
        write(self.out, text)

    def _undim(self) -> None:
        if self._dim_open:
            write(self.out, RESET)
            self._dim_open = False

    def _draw_spinner(self) -> None:
        now = self.env.clock()
        if now - self._last_draw < REDRAW_SECONDS:
            return
        self._last_draw = now
        self._tick += 1
        write(self.out, "\r" + CLEAR_LINE + style(self.env, spinner_line(self._tick, self.tokens), DIM))
        self._spinner_shown = True

    def _erase(self) -> None:
        """Remove the streamed thinking or the spinner from the screen (tty only)."""
        self._undim()
        if self._region is not None:
            up = UP.format(self._region.rows) if self._region.rows else ""
            write(self.out, "\r" + up + CLEAR_DOWN)
            self._region = None
        if self._spinner_shown:
            write(self.out, "\r" + CLEAR_LINE)
            self._spinner_shown = False

    def thinking_done(self, text: str, seconds: float, tokens: int) -> None:
        """A whole thinking section at once (search results): shown in full only in "show" mode."""
        text = text.strip()
        if self.mode == "show":
            self.thinking(text, tokens)
        else:
            self.thinking_text = text
        self.end_thinking(seconds, tokens)

    def end_thinking(self, seconds: float, tokens: int | None = None, *, interrupted: bool = False,
                     note: str | None = None) -> None:
        """The thinking closed (or was cut off): fold it into one line, plus an optional note."""
        if self._folded or not self.thinking_text:
            return
        self._folded = True
        if tokens is not None:
            self.tokens = tokens
        if self.mode == "show":
            self._undim()
            end = "" if self.thinking_text.endswith("\n") else "\n"
            write(self.out, end + style(self.env, fold_line(seconds, self.tokens, hint=False,
                                                            interrupted=interrupted), DIM) + "\n")
        else:
            self._erase()
            write(self.out, style(self.env, fold_line(seconds, self.tokens, interrupted=interrupted), DIM) + "\n")
        if note:
            write(self.out, style(self.env, f"· {note}", DIM) + "\n")

    # answer -----------------------------------------------------------------------------------

    def answer(self, text: str) -> None:
        if not self._answer_started:
            text = text.lstrip()
            if not text:
                return
            self._answer_started = True
        write(self.env.stdout, text)
        self._answer_ends_with_newline = text.endswith("\n")

    def abort(self) -> None:
        """The reply failed: clear the streamed thinking and end the answer's line."""
        self._erase()
        if self._answer_started and not self._answer_ends_with_newline:
            write(self.env.stdout, "\n")

    def finish(self, stats: TurnStats | None, n_ctx: int | None = None) -> None:
        """End the answer's line and print the status line."""
        self._erase()
        if self._answer_started and not self._answer_ends_with_newline:
            write(self.env.stdout, "\n")
        if stats is not None:
            write(self.out, style(self.env, status_line(stats, n_ctx), DIM) + "\n")
