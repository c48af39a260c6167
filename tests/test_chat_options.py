"""`qwq chat` and `qwq solve` options on the real tiny model: --resume's model, --system, penalties, top-p/top-k."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from qwq_local.config import user_data_dir
from qwq_local.render.history import History, Turn
from tests.test_cli import NATALIA, run_cli

SHORT = ["--ctx", "512", "--max-tokens", "8", "--temperature", "0"]


def test_resume_continues_with_the_conversations_model(smollm_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the default model, qwq-32b, is never fetched
    with History(user_data_dir() / "history.db") as h:
        cid = h.add_turn(None, Turn(prompt="Hi", answer="Hello!", model=str(smollm_path))).conversation_id
    monkeypatch.setattr("sys.stdin", io.StringIO("Say yes.\n"))
    code, _, err = run_cli(["chat", "--resume", str(cid), *SHORT], capsys)
    assert code == 0, err
    with History(user_data_dir() / "history.db") as h:
        turns = h.turns(cid)
    assert [t.prompt for t in turns] == ["Hi", "Say yes."] and turns[1].model == str(smollm_path)
