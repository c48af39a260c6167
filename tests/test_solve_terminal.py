"""`qwq solve` on the real tiny model: live progress in a terminal, Ctrl-C keeping the best path, --think-budget."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from qwq_local.cli import main

NATALIA = Path(__file__).parent.parent / "examples" / "natalia.md"
QWQ = [sys.executable, "-c", "from qwq_local.cli import main; main()"]


def _json_in(text: str) -> dict[str, Any]:
    """The JSON report in a terminal's output (progress lines and the closing `interrupted` around it)."""
    text = text.replace("\r\n", "\n")
    return json.loads(text[text.index("\n{") + 1: text.rindex("\n}") + 2])


def test_astar_shows_progress_within_a_second_of_loading_and_ctrl_c_keeps_the_best(
        spawn_terminal: Callable[..., Any], smollm_path: Path) -> None:
    child = spawn_terminal(QWQ[0], [*QWQ[1:], "solve", str(NATALIA), "--model", str(smollm_path), "--strategy",
                                    "astar", "--ctx", "2048", "--max-tokens", "96", "--seed", "7", "--max-depth", "6",
                                    "--json"],
                           timeout=600, encoding="utf-8", dimensions=(24, 160))
    child.expect(r"loaded \S+ in [\d.]+ s")
    loaded = time.monotonic()
    child.expect("astar: reading the prompt")
    assert time.monotonic() - loaded < 1.0
    child.expect(r"astar: reading the prompt… · [\d.]+ s")  # redrawn while the prompt is read
    child.expect(r"astar · 0 expansions · 0 finished · \d+ tokens")
    child.expect(r"astar · 1 expansion · best f \d\.\d\d · \d+ finished")
    child.sendintr()
    child.expect(r"▸ astar · \d+ expansions? · .* stopped: interrupted")
    child.expect("\ninterrupted")
    before = child.before
    child.expect(pytest.importorskip("pexpect").EOF)
    child.close()
    assert child.exitstatus == 130
    report = _json_in(before)
    assert report["stop_reason"] == "interrupted" and report["expansions"] >= 1
    assert report["answer"] and report["chosen_path"][0] == 0  # the best path so far, not nothing


def test_direct_think_budget_closes_the_thinking_of_the_real_model(smollm_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["solve", str(NATALIA), "--model", str(smollm_path), "--ctx", "1024", "--max-tokens", "40",
              "--temperature", "0", "--think-budget", "6", "--json"])
    out = capsys.readouterr().out
    report = json.loads(out)
    assert exc.value.code == 0
    assert report["thinking_cut"] == "budget" and report["stop_reason"] in ("stop", "length")
    assert re.search(r"[Tt]ime is up", report["thinking"])
    assert report["tokens"]["thinking"] >= 6
