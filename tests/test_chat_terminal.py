"""`qwq chat` as a person uses it: a real terminal (pexpect pty), the real tiny model, the history DB."""

from __future__ import annotations

import json
import os
import subprocess
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

pexpect = pytest.importorskip("pexpect")
pytestmark = [pytest.mark.model, pytest.mark.slow]

PROMPT = ">>>"


def test_real_repl_session(qwen_path: Path, user_path: Path, spawn_terminal: Callable[..., Any]) -> None:
    env = dict(os.environ, QWQ_USER_PATH=str(user_path), PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", COLUMNS="100",
               LINES="40")
    env.pop("NO_COLOR", None)
    child = spawn_terminal(sys.executable, ["-m", "qwq_local", "chat", "--model", str(qwen_path), "--ctx", "2048",
                                           "--temperature", "0", "--think-budget", "16", "--max-tokens", "300"],
                          env=env, encoding="utf-8", timeout=120, dimensions=(40, 100))
    child.logfile_read = open(os.environ.get("QWQ_TEST_SCREEN", os.devnull), "w")
    try:
        child.expect(PROMPT)
        child.sendline("What is 7 times 6?")
        child.expect("Thought for [0-9.]+ s")  # the forced thinking section folded into one line
        child.expect("tok/s")  # the status line closes the reply
        child.expect(PROMPT)
        child.sendline("/think")
        child.expect("Thinking of turn 1")
        child.expect(PROMPT)
        child.sendline("/budget 400")
        child.expect_exact("thinking budget: 400 tokens")  # not PROMPT alone: the redrawn input line holds ">>>" too,
        child.expect(PROMPT)  # and a line typed before the next prompt could meet the Ctrl-C below at that prompt
        child.sendline("Write a very long story about a lighthouse keeper.")
        child.expect_exact("lighthouse keeper.")  # the echo of what we typed
        child.expect_exact("\x1b[?2004l")  # prompt_toolkit has let go of the terminal: the reply streams
        child.expect("[A-Za-z]{4,} [A-Za-z]{3,}", timeout=120)  # words of the streamed reply (thinking, dim)
        child.sendintr()
        child.expect("interrupted")  # the status (or folded) line says so
        child.expect(PROMPT)
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    db = sqlite3.connect(user_path / "history.db")
    rows = db.execute("SELECT prompt, stop_reason, thinking || answer FROM turns ORDER BY idx").fetchall()
    assert rows[0][0] == "What is 7 times 6?"
    assert rows[0][2].count("42")
    assert rows[1][:2] == ("Write a very long story about a lighthouse keeper.", "interrupted")
    assert len(rows[1][2].split()) >= 2  # what streamed before Ctrl-C is kept


def test_piped_chat_resume_and_history(qwen_path: Path, user_path: Path) -> None:
    """Piped stdin answers each line; --resume ID continues it; `qwq history` lists, searches and exports it."""
    env = dict(os.environ, QWQ_USER_PATH=str(user_path), NO_COLOR="1")

    def qwq(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qwq_local", *args], input=stdin, env=env, text=True,
                              capture_output=True, timeout=300)

    common = ["--model", str(qwen_path), "--ctx", "2048", "--temperature", "0", "--max-tokens", "40"]
    first = qwq("chat", *common, stdin="What is the capital of France? One word.\n")
    assert first.returncode == 0, first.stderr
    assert "Paris" in first.stdout and "\x1b[" not in first.stdout
    listed = qwq("history")
    assert listed.returncode == 0 and "capital of France" in listed.stdout
    second = qwq("chat", *common, "--resume", "1", stdin="And of Italy? One word.\n")
    assert second.returncode == 0, second.stderr
    assert "Rome" in second.stdout
    shown = json.loads(qwq("history", "show", "1", "--json").stdout)
    prompts = [t["prompt"] for t in shown["turns"]]
    assert prompts == ["What is the capital of France? One word.", "And of Italy? One word."]
    searched = qwq("chat", *common, stdin="/search astar\nWhat is 2 + 2? Reply with the number.\n")
    assert searched.returncode == 0, searched.stderr
    assert "4" in searched.stdout  # the answer on stdout, the folded search summary on stderr
    assert "astar:" in searched.stderr and "expansions" in searched.stderr
    found = qwq("history", "search", "Italy")
    assert found.returncode == 0 and "Italy" in found.stdout
    bad = qwq("chat", *common, "--resume", "999", stdin="hi\n")
    assert bad.returncode not in (0, 1) and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
