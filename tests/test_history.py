"""Conversation history: turns, search, export, concurrent writers, full disk, migrations."""

from __future__ import annotations

import io
import json
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwq_local.errors import ExitCode, UsageError
from qwq_local.render.history import (
    SCHEMA_VERSION,
    History,
    HistoryError,
    Turn,
    default_path,
    title_of,
)
from qwq_local.render.console import Env
from qwq_local.render.history_view import (
    print_conversations,
    print_export,
    print_search,
)


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    with History(tmp_path / "history.db") as h:
        yield h


def turn(prompt: str, answer: str = "42", **kw: Any) -> Turn:
    kw.setdefault("thinking", f"thinking about {prompt}")
    return Turn(prompt=prompt, answer=answer, model="fake", **kw)


def test_default_path_is_in_the_user_data_dir(user_path: Path) -> None:
    assert default_path() == user_path / "history.db"


def test_database_uses_wal_and_schema_version(history: History) -> None:
    conn = sqlite3.connect(history.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == history.schema_version


def test_turns_are_numbered_and_read_back(history: History) -> None:
    first = history.add_turn(None, turn("What is 6*7?", thinking_tokens=12, seconds=1.5))
    assert first.ok and first.conversation_id and first.idx == 1
    cid = first.conversation_id
    second = history.add_turn(cid, turn("And 6*8?", answer="48", stop_reason="interrupted"))
    assert second.idx == 2
    turns = history.turns(cid)
    assert [(t.idx, t.prompt, t.answer) for t in turns] == [(1, "What is 6*7?", "42"), (2, "And 6*8?", "48")]
    assert turns[0].thinking == "thinking about What is 6*7?" and turns[0].thinking_tokens == 12
    assert turns[1].stop_reason == "interrupted"
    conv = history.conversations()[0]
    assert (conv.id, conv.title, conv.model, conv.turns) == (cid, "What is 6*7?", "fake", 2)


def test_new_conversation_gets_its_title_from_the_first_turn(history: History) -> None:
    cid = history.new_conversation("fake")
    assert history.conversation(cid).title == ""  # type: ignore[union-attr]
    history.add_turn(cid, turn("\n  Prove it\nplease"))
    history.add_turn(cid, turn("later prompt"))
    assert history.conversation(cid).title == "Prove it"  # type: ignore[union-attr]


def test_title_is_shortened() -> None:
    assert title_of("x" * 100, width=10) == "x" * 9 + "…"


def test_latest_id_is_the_most_recently_active(tmp_path: Path) -> None:
    stamps = iter(f"2026-01-01T00:00:{s:02d}+00:00" for s in range(60))
    with History(tmp_path / "h.db", clock=lambda: next(stamps)) as h:
        assert h.latest_id() is None
        a = h.add_turn(None, turn("a")).conversation_id
        b = h.add_turn(None, turn("b")).conversation_id
        assert h.latest_id() == b
        h.add_turn(a, turn("a again"))
        assert h.latest_id() == a
        assert [c.id for c in h.conversations()] == [a, b]


def test_search_finds_prompts_and_answers(history: History) -> None:
    cid = history.add_turn(None, turn("How many primes below twenty?", answer="There are 8 primes.")).conversation_id
    history.add_turn(cid, turn("Name a colour", answer="Vermilion"))
    hits = history.search("primes")
    assert [(h.conversation_id, h.idx) for h in hits] == [(cid, 1)]
    assert hits[0].snippet == "How many [primes] below twenty?"
    assert [h.idx for h in history.search("vermil")] == [2]  # prefix match
    assert history.search('colour "quoted" AND (') == []  # user text is never FTS syntax
    assert history.search("   ") == []


def test_search_does_not_index_thinking(history: History) -> None:
    history.add_turn(None, Turn(prompt="q", thinking="secretword", answer="a"))
    assert history.search("secretword") == []


def test_export_markdown_and_json(history: History) -> None:
    cid = history.add_turn(None, turn("What is 6*7?", thinking_tokens=5)).conversation_id
    assert cid is not None
    history.add_turn(cid, turn("Search it", answer="7", strategy="astar", stop_reason="length"))
    md = history.export_markdown(cid)
    assert md.startswith("# What is 6*7?\n")
    assert "## 1. User\n\nWhat is 6*7?" in md
    assert "<details><summary>Thinking (5 tokens)</summary>" in md
    assert "## 2. Assistant (astar)\n\n7" in md and "_stopped: length_" in md
    data = json.loads(history.export_json(cid))
    assert data["id"] == cid and [t["prompt"] for t in data["turns"]] == ["What is 6*7?", "Search it"]
    assert data["turns"][0]["thinking"] == "thinking about What is 6*7?"
    with pytest.raises(HistoryError):
        history.export_markdown(999)


def _write_turns(path: str, worker: int, shared: int, n: int) -> None:
    with History(Path(path)) as h:
        own = None
        for i in range(n):
            assert h.add_turn(shared, turn(f"shared {worker}.{i}")).ok
            own = h.add_turn(own, turn(f"own {worker}.{i}")).conversation_id


def _check_concurrent_result(h: History, shared: int, workers: int, n: int) -> None:
    shared_turns = h.turns(shared)
    assert len(shared_turns) == workers * n
    assert [t.idx for t in shared_turns] == list(range(1, workers * n + 1))
    assert len(h.conversations()) == workers + 1
    assert h._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    h._conn.execute("INSERT INTO turns_fts(turns_fts) VALUES ('integrity-check')")  # raises if index and rows differ
    assert len(h.search("shared")) == min(20, workers * n)


def test_two_processes_writing_at_once(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with History(path) as h:
        shared = h.new_conversation("fake")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_turns, args=(str(path), w, shared, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with History(path) as h:
        _check_concurrent_result(h, shared, 2, 40)


def test_threads_writing_at_once(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with History(path) as h:
        shared = h.new_conversation("fake")
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            _write_turns(str(path), w, shared, 25)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with History(path) as h:
        _check_concurrent_result(h, shared, 3, 25)


def test_two_processes_opening_a_new_database_at_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_turns, args=(str(path), w, None, 5)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with History(path) as h:
        assert h.schema_version == SCHEMA_VERSION
        assert sum(c.turns for c in h.conversations()) == 20


def test_full_disk_gives_a_warning_not_a_crash(history: History) -> None:
    cid = history.add_turn(None, turn("before")).conversation_id
    assert cid is not None
    pages = history._conn.execute("PRAGMA page_count").fetchone()[0]
    history._conn.execute(f"PRAGMA max_page_count = {pages}")  # a real SQLITE_FULL on the next growth
    result = history.add_turn(cid, turn("big " * 50_000))
    assert not result.ok and result.warning == "history not saved: the disk is full"
    assert result.turn_id is None
    history._conn.execute("PRAGMA max_page_count = 1073741823")
    assert history.add_turn(cid, turn("after")).ok  # the failed transaction was rolled back
    assert [t.prompt for t in history.turns(cid)] == ["before", "after"]


def test_full_disk_simulated_by_monkeypatch(history: History, monkeypatch: pytest.MonkeyPatch) -> None:
    class FullDisk:
        def __enter__(self) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(history, "_transaction", FullDisk)
    result = history.add_turn(None, turn("q"))
    assert result.warning == "history not saved: the disk is full" and result.conversation_id is None
    with pytest.raises(HistoryError, match="disk is full"):
        history.new_conversation("fake")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    History(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(HistoryError, match="schema"):
        History(path)


def test_unreadable_file_is_a_history_error(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(HistoryError, match="cannot open"):
        History(path)


# --- `qwq history` output (render/history_view.py) ----------------------------------------------


def plain_env() -> tuple[Env, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Env(stdin=io.StringIO(), stdout=out, stderr=err), out, err


def test_history_list_search_and_export_output(tmp_path: Path) -> None:
    stamps = iter(f"2026-01-02T03:04:{s:02d}+00:00" for s in range(60))
    with History(tmp_path / "h.db", clock=lambda: next(stamps)) as h:
        env, out, err = plain_env()
        assert print_conversations(env, h) == 0 and "no conversations yet" in err.getvalue()
        cid = h.add_turn(None, turn("How many primes below twenty?", answer="There are 8 primes.")).conversation_id
        assert cid is not None
        env, out, _ = plain_env()
        assert print_conversations(env, h) == 1
        assert out.getvalue().splitlines()[1] == f"{cid:>4}  2026-01-02 03:04    1 turns  fake  How many primes below twenty?"
        env, out, _ = plain_env()
        assert print_search(env, h, "primes") == 1
        assert out.getvalue().startswith(f"{'1.1':>8}  How many primes below twenty?  — ")
        with pytest.raises(UsageError):
            print_search(env, h, " ")
        with pytest.raises(UsageError, match="not UTF-8"):
            print_search(env, h, "caf\udce9")  # a byte that is not UTF-8, as the shell's argument holds it
        with pytest.raises(UsageError, match="NUL"):
            print_search(env, h, "pri\0mes")
        env, out, _ = plain_env()
        print_export(env, h, None, "json")
        assert json.loads(out.getvalue())["id"] == cid
        env, out, _ = plain_env()
        print_export(env, h, cid)
        assert out.getvalue().startswith("# How many primes below twenty?")
        with pytest.raises(UsageError, match="no conversation 42"):
            print_export(env, h, 42)
        assert "\x1b" not in out.getvalue()


def test_history_json_and_rm_through_the_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from qwq_local.config import user_data_dir
    from tests.test_cli import run_cli

    path = user_data_dir() / "history.db"
    with History(path) as h:
        keep = h.add_turn(None, turn("How many primes below twenty?", answer="There are 8 primes.")).conversation_id
        gone = h.add_turn(None, turn("Which primes are even?", answer="Only 2 primes.",
                                     thinking="SECRET-THOUGHT-7c1e about primes")).conversation_id
        h.add_turn(gone, turn("And odd primes?", answer="All other primes.", thinking="SECRET-THOUGHT-7c1e again"))
    code, out, _ = run_cli(["history", "--json"], capsys)
    listed = json.loads(out)
    assert code == 0 and [c["id"] for c in listed] == [gone, keep] and listed[0]["turns"] == 2
    code, out, _ = run_cli(["history", "search", "even", "--json"], capsys)
    assert code == 0 and json.loads(out) == [{"conversation_id": gone, "idx": 1, "prompt": "Which primes are even?",
                                              "snippet": "Which primes are [even]?"}]
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, _, err = run_cli(["history", "rm", str(gone)], capsys)
    assert code == 0 and "nothing deleted" in err
    code, out, _ = run_cli(["history", "rm", str(gone), "--yes"], capsys)
    assert code == 0 and out == f"deleted conversation {gone} (2 turns)\n"
    code, out, _ = run_cli(["history", "--json"], capsys)
    assert [c["id"] for c in json.loads(out)] == [keep]
    on_disk = b"".join(p.read_bytes() for p in path.parent.glob("history.db*"))
    assert b"SECRET-THOUGHT-7c1e" not in on_disk and b"Which primes are even" not in on_disk
    code, _, err = run_cli(["history", "rm", str(gone), "--yes"], capsys)
    assert code == ExitCode.USAGE and f"no conversation {gone}" in err
