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
    rc = run_chat(FakeChat(), load_settings(), env, history, each_line=True)
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


def test_a_locked_database_under_a_path_that_says_corrupt_is_not_moved_aside(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "BUSY_TIMEOUT_MS", 200)
    where = tmp_path / "not-corrupt-dir"  # the error message names the file: its path's words are not SQLite's
    where.mkdir()
    path = where / "history.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        history, warning = open_history(path)
    finally:
        holder.close()
    assert history is None and warning is not None and "not saved this session" in warning
    assert not list(where.glob("history.db.corrupt-*")) and path.exists()


def test_a_turn_the_history_could_not_take_is_written_with_the_next_one(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from qwq_local.render.history import SaveResult

    real = History.add_turn
    calls = []

    def flaky(self: History, conversation_id: int | None, turn: Turn) -> SaveResult:
        calls.append(turn.prompt)
        if len(calls) in (2, 3):  # q2 meets a lock, and again when q3 comes; then the lock is gone
            return SaveResult(conversation_id, warning="history not saved: database is locked (kept in memory)")
        return real(self, conversation_id, turn)

    monkeypatch.setattr(History, "add_turn", flaky)
    with History(tmp_path / "history.db") as history:
        rc, _, err = _chat(history, "q1\nq2\nq3\nq4\n", tmp_path)
        stored = [t.prompt for t in history.turns(history.latest_id())]
    assert rc == 0 and stored == ["q1", "q2", "q3", "q4"]  # no hole where q2 was
    assert err.count("database is locked") == 1 and "history saved again, the 2 turns it missed included" in err


def test_history_errors_have_their_own_exit_code() -> None:
    assert HistoryError("x").exit_code == ExitCode.HISTORY_UNAVAILABLE != ExitCode.UNEXPECTED


# A read-only or full disk, for real: the data dir is a read-only bind mount or a small full tmpfs in a user and
# mount namespace (root ignores file modes, so chmod would prove nothing), and `qwq chat` runs on the fake model.

ROOT = Path(__file__).resolve().parent.parent

_FILL = """
import sys
from pathlib import Path
from qwq_local.render.history import History, Turn
path = Path(sys.argv[1])
with History(path) as history:
    history.add_turn(None, Turn(prompt="an old question", answer="an old answer"))
if len(sys.argv) > 2:  # fill the disk to its last byte
    with open(path.parent / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 4096)
                filler.flush()
        except OSError:
            pass
    with open(path.parent / "filler", "ab", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x")
                filler.flush()
        except OSError:
            pass
"""


def _namespaces_available() -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode == 0


def _chat_on(disk: str, data: Path, lines: str) -> tuple[int, str, str]:
    """Piped `qwq chat` (the fake model) with its data dir on a read-only or a full disk."""
    import os
    import shlex
    import subprocess
    import sys

    python, db = shlex.quote(sys.executable), shlex.quote(str(data / "history.db"))
    where = shlex.quote(str(data))
    if disk == "read-only":
        setup = (f"{python} -c {shlex.quote(_FILL)} {db} && mount --bind {where} {where} && "
                 f"mount -o remount,bind,ro {where}")
    else:
        setup = f"mount -t tmpfs -o size=256k qwq-full {where} && {python} -c {shlex.quote(_FILL)} {db} full"
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "/bin/sh", "-c",
         f"{setup} && exec {python} -m tests.fake_chat"],
        input=lines, capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "QWQ_USER_PATH": str(data), "FAKE_CHAT_EACH_LINE": "1"},
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("disk", ["read-only", "full"])
def test_a_read_only_or_full_disk_gives_one_warning_and_loses_no_turn(disk: str, tmp_path: Path) -> None:
    if not _namespaces_available():
        pytest.skip("no user and mount namespaces here to make a read-only or full disk")
    data = tmp_path / "data"
    data.mkdir()
    saved = tmp_path / "saved.md"
    rc, out, err = _chat_on(disk, data, f"first?\nsecond?\nthird?\n/save {saved}\n")
    assert rc == 0 and "Traceback" not in err, err
    warnings = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, err
    assert f"the disk holding {data} is {disk}" in warnings[0]  # not SQLite's "disk I/O error" alone
    assert out.count("The answer is 42.") == 3  # every reply on screen
    text = saved.read_text()
    assert all(q in text for q in ("first?", "second?", "third?"))


_MID_SESSION = """
import sys
from pathlib import Path
from qwq_local.render.history import History, Turn
path = Path(sys.argv[1])
with History(path) as history:
    first = history.add_turn(None, Turn(prompt="q1", answer="a1"))
    assert first.ok, first
    with open(path.parent / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 4096)
        except OSError:
            pass
    second = history.add_turn(first.conversation_id, Turn(prompt="q2", answer="a2" * 20000))
    print(second.warning)
"""


def test_a_disk_that_fills_mid_session_is_a_warning_that_says_so(tmp_path: Path) -> None:
    """(A disk cannot be made read-only under an open database: Linux refuses while files are open to write.)"""
    import shlex
    import subprocess
    import sys

    if not _namespaces_available():
        pytest.skip("no user and mount namespaces here to make a read-only or full disk")
    data = tmp_path / "data"
    data.mkdir()
    where, db = shlex.quote(str(data)), shlex.quote(str(data / "history.db"))
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "/bin/sh", "-c",
         f"mount -t tmpfs -o size=1m qwq-disk {where} && exec {shlex.quote(sys.executable)} -c "
         f"{shlex.quote(_MID_SESSION)} {db}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    warning = proc.stdout.strip()
    assert warning == "history not saved: the disk is full"
