"""`qwq solve`'s live progress on stderr: one redrawn line per long step (load, prompt, thinking, search), each
left behind as one finished line, as chat folds its thinking. Only on a terminal: piped stderr gets nothing."""

from __future__ import annotations

import threading
from typing import Callable

from qwq_local.render.console import CLEAR_LINE, DIM, SPINNER, Env, fold_line, style, write
from qwq_local.search.protocol import SearchProgress

TICK_SECONDS = 0.2


def search_line(strategy: str, progress: SearchProgress | None, tokens: int) -> str:
    """`astar · 3 expansions · best f 1.42 · 1 finished · 812 tokens`."""
    parts = [strategy]
    if progress is not None:
        parts.append(f"{progress.expansions} expansion{'' if progress.expansions == 1 else 's'}")
        if progress.best_f is not None:
            parts.append(f"best f {progress.best_f:.2f}")
        parts.append(f"{progress.finished} finished")
    parts.append(f"{tokens:,} tokens")
    return " · ".join(parts)


class SolveProgress:
    """The live line: `start(label)` shows a step with a spinner and its seconds, redrawn every TICK_SECONDS by a
    daemon thread (a QwQ-32B step can take minutes between events); `done(line)` leaves the step's summary."""

    def __init__(self, env: Env, *, enabled: bool | None = None, ticker: bool = True) -> None:
        self.env = env
        self.enabled = env.stderr_isatty if enabled is None else enabled
        self.ticker = ticker
        self.out = env.stderr
        self._lock = threading.Lock()
        self._label: Callable[[], str] | None = None
        self._started = 0.0
        self._tick = 0
        self._shown = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tokens: Callable[[], int] = lambda: 0
        self._search: SearchProgress | None = None
        self._strategy = ""
        self._thought = 0  # thinking tokens of a direct reply so far
        self._thinking = False

    # steps ------------------------------------------------------------------------------------

    def start(self, label: str | Callable[[], str]) -> None:
        """A step begins: its label (or a function giving it) is drawn now and redrawn until the next call."""
        if not self.enabled:
            return
        with self._lock:
            self._label = label if callable(label) else (lambda: label)
            self._started = self.env.clock()
        self.draw()
        if self.ticker and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="qwq-progress", daemon=True)
            self._thread.start()

    def done(self, line: str | None = None) -> None:
        """The step ended: its live line is cleared and `line`, if given, stays."""
        if not self.enabled:
            return
        with self._lock:
            self._label = None
            self._clear()
            if line:
                write(self.out, style(self.env, line, DIM) + "\n")

    def elapsed(self) -> float:
        return self.env.clock() - self._started

    def close(self) -> None:
        """Stop redrawing and clear the line (also after Ctrl-C or an error)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self.enabled:
            with self._lock:
                self._label = None
                self._clear()

    # what the steps report --------------------------------------------------------------------

    def thinking(self, tokens: int) -> None:
        """Direct generation is thinking: the live line counts its tokens."""
        self._thought = tokens
        if not self._thinking:
            self._thinking = True
            self.start(lambda: f"thinking… {self._thought:,} tokens")

    def thought(self, seconds: float, tokens: int, note: str | None = None) -> None:
        """The thinking closed: fold it into one line (plus why it was cut short, if it was)."""
        self.done(fold_line(seconds, tokens, hint=False) + (f" · {note}" if note else ""))

    def searching(self, strategy: str) -> None:
        """A search starts (its policy reads the prompt first)."""
        self._strategy = strategy
        self.start(lambda: search_line(self._strategy, self._search, self._tokens())
                   if self._search is not None else f"{self._strategy}: reading the prompt…")

    def policy_ready(self, generated_tokens: Callable[[], int]) -> None:
        self._tokens = generated_tokens

    def search(self, progress: SearchProgress) -> None:
        self._search = progress
        self.draw()

    def searched(self, seconds: float, stop_reason: str) -> None:
        """The search ended: its last counts stay as one line."""
        line = search_line(self._strategy, self._search, self._tokens())
        self.done(f"▸ {line} · {seconds:.1f} s" + (f" · stopped: {stop_reason}" if stop_reason != "done" else ""))

    # drawing ----------------------------------------------------------------------------------

    def draw(self) -> None:
        """Redraw the live line now (the ticker calls this; tests call it by hand)."""
        if not self.enabled:
            return
        with self._lock:
            if self._label is None:
                return
            self._tick += 1
            text = f"{SPINNER[self._tick % len(SPINNER)]} {self._label()} · {self.elapsed():.1f} s"
            columns = self.env.size()[0]
            write(self.out, "\r" + CLEAR_LINE + style(self.env, text[: max(columns - 1, 10)], DIM))
            self._shown = True

    def _clear(self) -> None:
        if self._shown:
            write(self.out, "\r" + CLEAR_LINE)
            self._shown = False

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self.draw()
