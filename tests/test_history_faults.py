"""A history database that fails (corrupt, locked) never ends a chat nor loses a turn from the screen or /save."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest

from qwq_local.config import load_settings
from qwq_local.errors import ExitCode
from qwq_local.render import history as history_module
from qwq_local.render.console import Env
from qwq_local.render.history import History, HistoryError, Turn, open_history
from qwq_local.render.repl import run_chat
from tests.fake_chat import FakeChat


def _chat(history: History | None, lines: str, data_dir: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    env = Env(stdin=io.StringIO(lines), stdout=out, stderr=err, data_dir=data_dir)
    rc = run_chat(FakeChat(), load_settings(), env, history)
    return rc, out.getvalue(), err.getvalue()


def _filled(path: Path, turns: int = 40) -> None:
    with History(path) as history:
        conversation = None
        for n in range(turns):
            conversation = history.add_turn(conversation, Turn(prompt=f"q{n}", answer="a" * 2000)).conversation_id
        history._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def test_random_bytes_are_moved_aside_and_a_new_database_started(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"\x13\x37 not sqlite at all " * 500)
    history, warning = open_history(path)
    assert history is not None and warning is not None and "moved to history.db.corrupt-" in warning
    aside = list(tmp_path.glob("history.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"\x13\x37")
    with history:
        rc, _, _ = _chat(history, "first?\nsecond?\n", tmp_path)
        assert rc == 0 and [t.prompt for t in history.turns(history.latest_id())] == ["first?", "second?"]


def test_corrupted_pages_are_found_at_open_and_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    _filled(path)
    data = bytearray(path.read_bytes())
    data[4096 * 3 : 4096 * 6] = b"\xde\xad\xbe\xef" * (4096 * 3 // 4)
    path.write_bytes(bytes(data))
    history, warning = open_history(path)
    assert history is not None and warning is not None and "corrupt" in warning
    history.close()


def test_a_turn_that_cannot_be_written_to_a_corrupt_file_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    _filled(path)
    data = bytearray(path.read_bytes())
    data[4096 * 3 : 4096 * 6] = b"\xde\xad\xbe\xef" * (4096 * 3 // 4)
    path.write_bytes(bytes(data))
    with History(path) as history:  # opened as before the check: the damage shows at the first write
        result = history.add_turn(1, Turn(prompt="late", answer="x"))
    assert not result.ok and result.warning is not None and "kept in memory" in result.warning


def test_a_locked_database_gives_one_warning_and_the_chat_goes_on(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "history.db"
    holder = sqlite3.connect(path, isolation_level=None)  # rollback journal: an exclusive lock blocks everyone
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        history, warning = open_history(path)
        assert history is None and warning is not None and "not saved this session" in warning
        saved = tmp_path / "t.md"
        rc, _, err = _chat(None, f"first?\nsecond?\n/save {saved}\n", tmp_path)
    finally:
        holder.close()
    assert rc == 0 and "Traceback" not in err
    text = saved.read_text()
    assert "first?" in text and "second?" in text


def test_history_errors_have_their_own_exit_code() -> None:
    assert HistoryError("x").exit_code == ExitCode.HISTORY_UNAVAILABLE != ExitCode.UNEXPECTED
