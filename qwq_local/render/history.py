"""Conversation history in SQLite (WAL, busy timeout, FTS5 search), one transaction per turn.

Writes never crash the REPL: a full disk or a database locked for too long comes back as a
`SaveResult` with a warning. The schema version lives in `PRAGMA user_version`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from qwq_local.config import user_data_dir
from qwq_local.errors import ExitCode, QwqError

DB_NAME = "history.db"
BUSY_TIMEOUT_MS = 10_000

_SCHEMA_V1 = """
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE TABLE turns (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    thinking TEXT NOT NULL DEFAULT '',
    answer TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    strategy TEXT NOT NULL DEFAULT 'direct',
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    thinking_tokens INTEGER NOT NULL DEFAULT 0,
    answer_tokens INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    stop_reason TEXT NOT NULL DEFAULT 'eos',
    UNIQUE (conversation_id, idx)
);
CREATE INDEX turns_conversation ON turns(conversation_id, idx);
CREATE VIRTUAL TABLE turns_fts USING fts5(prompt, answer, content='turns', content_rowid='id');
CREATE TRIGGER turns_ai AFTER INSERT ON turns BEGIN
    INSERT INTO turns_fts(rowid, prompt, answer) VALUES (new.id, new.prompt, new.answer);
END;
CREATE TRIGGER turns_ad AFTER DELETE ON turns BEGIN
    INSERT INTO turns_fts(turns_fts, rowid, prompt, answer) VALUES ('delete', old.id, old.prompt, old.answer);
END;
CREATE TRIGGER turns_au AFTER UPDATE ON turns BEGIN
    INSERT INTO turns_fts(turns_fts, rowid, prompt, answer) VALUES ('delete', old.id, old.prompt, old.answer);
    INSERT INTO turns_fts(rowid, prompt, answer) VALUES (new.id, new.prompt, new.answer);
END;
"""

MIGRATIONS: list[str] = [_SCHEMA_V1]  # MIGRATIONS[n] takes user_version n to n + 1
SCHEMA_VERSION = len(MIGRATIONS)


class HistoryError(QwqError):
    """The history database cannot be opened or read."""

    exit_code = ExitCode.HISTORY_UNAVAILABLE


@dataclass
class Turn:
    """One question and its reply, as stored."""

    prompt: str
    thinking: str = ""
    answer: str = ""
    model: str = ""
    strategy: str = "direct"
    prompt_tokens: int = 0
    thinking_tokens: int = 0
    answer_tokens: int = 0
    seconds: float = 0.0
    stop_reason: str = "eos"
    idx: int = 0  # 1-based position in its conversation
    created: str = ""
    id: int | None = None
    conversation_id: int | None = None
    tree_summary: str = field(default="", compare=False)  # search tree, shown in the REPL; not stored


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model: str
    created: str
    turns: int = 0
    updated: str = ""


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    idx: int
    prompt: str
    snippet: str


@dataclass(frozen=True)
class SaveResult:
    """What became of a write: ids when it was stored, a warning for the user when it was not."""

    conversation_id: int | None
    turn_id: int | None = None
    idx: int | None = None
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.warning is None


def default_path() -> Path:
    return user_data_dir() / DB_NAME


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def title_of(prompt: str, width: int = 60) -> str:
    """A conversation title: the first non-empty line of its first prompt, shortened."""
    line = next((ln.strip() for ln in prompt.splitlines() if ln.strip()), "")
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


_TURN_COLUMNS = (
    "id, conversation_id, idx, prompt, thinking, answer, model, strategy, prompt_tokens, "
    "thinking_tokens, answer_tokens, seconds, created, stop_reason"
)


def _turn(row: sqlite3.Row) -> Turn:
    return Turn(**dict(row))


class History:
    """The conversation store; one instance per thread (sqlite3 connections are not shared)."""

    def __init__(self, path: Path | None = None, *, clock: Callable[[], str] = _now) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._clock = clock
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._wal()
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise HistoryError(f"cannot open history database {self.path}: {exc}") from None

    def _wal(self) -> None:
        """Turn on WAL; SQLite answers "locked" at once, without waiting, while another process switches a new file."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> History:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        if self.schema_version == SCHEMA_VERSION:
            return
        with self._transaction():
            version = self.schema_version  # re-read under the write lock: another process may have won
            if version > SCHEMA_VERSION:
                raise HistoryError(
                    f"history database {self.path} has schema {version}; this qwq knows {SCHEMA_VERSION}"
                )
            for n in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[n]):
                    self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    # --- writes ---------------------------------------------------------------------------

    def new_conversation(self, model: str, title: str = "") -> int:
        """Create an empty conversation; raises HistoryError when it cannot be written."""
        try:
            with self._transaction():
                cur = self._conn.execute(
                    "INSERT INTO conversations (title, model, created) VALUES (?, ?, ?)",
                    (title, model, self._clock()),
                )
                return int(cur.lastrowid or 0)
        except sqlite3.OperationalError as exc:
            raise HistoryError(_write_warning(exc, self.path)) from None

    def add_turn(self, conversation_id: int | None, turn: Turn) -> SaveResult:
        """Store a completed turn in one transaction (creating its conversation when id is None).

        The turn's idx is the next free one in the conversation. A full disk or a lock that
        outlasts the busy timeout is reported in the result, never raised.
        """
        try:
            with self._transaction():
                created = turn.created or self._clock()
                if conversation_id is None:
                    cur = self._conn.execute(
                        "INSERT INTO conversations (title, model, created) VALUES (?, ?, ?)",
                        (title_of(turn.prompt), turn.model, created),
                    )
                    conversation_id = int(cur.lastrowid or 0)
                else:
                    self._conn.execute(
                        "UPDATE conversations SET title = ? WHERE id = ? AND title = ''",
                        (title_of(turn.prompt), conversation_id),
                    )
                idx = self._conn.execute(
                    "SELECT COALESCE(MAX(idx), 0) + 1 FROM turns WHERE conversation_id = ?",
                    (conversation_id,),
                ).fetchone()[0]
                cur = self._conn.execute(
                    "INSERT INTO turns (conversation_id, idx, prompt, thinking, answer, model, strategy, "
                    "prompt_tokens, thinking_tokens, answer_tokens, seconds, created, stop_reason) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        conversation_id, idx, turn.prompt, turn.thinking, turn.answer, turn.model,
                        turn.strategy, turn.prompt_tokens, turn.thinking_tokens, turn.answer_tokens,
                        turn.seconds, created, turn.stop_reason,
                    ),
                )
        except sqlite3.IntegrityError as exc:
            return SaveResult(conversation_id, warning=f"turn not saved to history: {exc}")
        except sqlite3.OperationalError as exc:
            return SaveResult(conversation_id, warning=_write_warning(exc, self.path))
        except sqlite3.Error as exc:  # a file corrupted under us: the turn stays on screen and in /save
            return SaveResult(conversation_id, warning=f"turn not saved: the history database {self.path} "
                                                       f"failed ({exc}); this session is kept in memory only")
        return SaveResult(conversation_id, int(cur.lastrowid or 0), int(idx))

    def delete(self, conversation_id: int) -> int:
        """Delete a conversation and every turn of it, thinking included, overwriting what SQLite frees.

        Returns the number of turns deleted; HistoryError when there is no such conversation.
        """
        self._require(conversation_id)
        try:
            self._conn.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed, not left readable
            with self._transaction():
                count = self._conn.execute("DELETE FROM turns WHERE conversation_id = ?", (conversation_id,)).rowcount
                self._conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # nor kept in old WAL frames
        except sqlite3.OperationalError as exc:
            raise HistoryError(_write_warning(exc, self.path)) from None
        return int(count)

    # --- reads ----------------------------------------------------------------------------

    def conversations(self, limit: int | None = None) -> list[Conversation]:
        """Conversations, most recently active first."""
        rows = self._read(
            "SELECT c.id, c.title, c.model, c.created, COUNT(t.id) AS turns, "
            "COALESCE(MAX(t.created), c.created) AS updated "
            "FROM conversations c LEFT JOIN turns t ON t.conversation_id = c.id "
            "GROUP BY c.id ORDER BY updated DESC, c.id DESC LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [Conversation(**dict(row)) for row in rows]

    def conversation(self, conversation_id: int) -> Conversation | None:
        return next((c for c in self.conversations() if c.id == conversation_id), None)

    def turns(self, conversation_id: int) -> list[Turn]:
        rows = self._read(
            f"SELECT {_TURN_COLUMNS} FROM turns WHERE conversation_id = ? ORDER BY idx", (conversation_id,)
        )
        return [_turn(row) for row in rows]

    def latest_id(self) -> int | None:
        """The conversation with the most recent activity, or None when there is none."""
        latest = self.conversations(limit=1)
        return latest[0].id if latest else None

    def search(self, text: str, limit: int = 20) -> list[SearchHit]:
        """Full-text search over prompts and answers; every word must match (as a prefix)."""
        query = " ".join('"' + word.replace('"', '""') + '"*' for word in text.split())
        if not query:
            return []
        rows = self._read(
            "SELECT t.conversation_id, t.idx, t.prompt, "
            "snippet(turns_fts, -1, '[', ']', '…', 12) AS snippet "
            "FROM turns_fts JOIN turns t ON t.id = turns_fts.rowid "
            "WHERE turns_fts MATCH ? ORDER BY rank LIMIT ?",
            (query, limit),
        )
        return [SearchHit(**dict(row)) for row in rows]

    def export_markdown(self, conversation_id: int) -> str:
        conv = self._require(conversation_id)
        return transcript_markdown(conv.title, conv.model, self.turns(conversation_id))

    def export_json(self, conversation_id: int) -> str:
        conv = self._require(conversation_id)
        turns = [{k: v for k, v in asdict(t).items() if k != "tree_summary"} for t in self.turns(conversation_id)]
        return json.dumps({**asdict(conv), "turns": turns}, ensure_ascii=False, indent=2)

    def _require(self, conversation_id: int) -> Conversation:
        conv = self.conversation(conversation_id)
        if conv is None:
            raise HistoryError(f"no conversation {conversation_id} in history")
        return conv

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"cannot read history database {self.path}: {exc}") from None


_CORRUPT = ("not a database", "malformed", "corrupt")


def open_history(path: Path, clock: Callable[[], str] = _now) -> tuple[History | None, str | None]:
    """(the history, a warning for the user) for a chat, which goes on whatever state the file is in.

    A corrupt file is moved aside (with its -wal and -shm) and a new one started, as fish or Firefox do; one that
    is locked, read-only or on a full disk gives None: the session is kept on screen and in /save only.
    """
    try:
        history = History(path, clock=clock)
        check = history._conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        if check == "ok":
            return history, None
        history.close()
        problem, corrupt = " ".join(str(check).split()), True
    except (HistoryError, sqlite3.Error) as exc:
        problem = " ".join(getattr(exc, "message", str(exc)).split())
        cause = exc if isinstance(exc, sqlite3.Error) else exc.__cause__ or exc.__context__  # raised `from None`
        # SQLite's own code, or its own words: the message also names the file, whose path may hold any word
        code = getattr(cause, "sqlite_errorcode", None)
        corrupt = code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) if code is not None else (
            isinstance(cause, sqlite3.Error) and any(word in str(cause) for word in _CORRUPT))
    if not corrupt:
        cause = disk_cause(path)
        return None, f"history is not saved this session{': ' + cause if cause else ''} ({problem})"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                source.replace(aside.with_name(aside.name + suffix))
        history = History(path, clock=clock)
    except (HistoryError, sqlite3.Error, OSError) as exc:
        return None, f"history is not saved this session: {path} is corrupt and could not be replaced ({exc})"
    return history, f"the history database was corrupt ({problem}): moved to {aside.name}, a new one started"



class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                self._conn.execute("COMMIT")
        finally:
            if self._conn.in_transaction:  # an exception, or a COMMIT that failed (disk full)
                self._conn.execute("ROLLBACK")


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (triggers keep their inner semicolons)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""


def disk_cause(path: Path) -> str | None:
    """What SQLite's "unable to open database file" or "disk I/O error" means here: a read-only or a full disk."""
    folder = path.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"the disk holding {folder} is read-only"
        if shutil.disk_usage(folder).free < 64 * 1024:
            return f"the disk holding {folder} is full"
    except OSError:
        return None
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{path} is read-only for you"
    return None


def _write_warning(exc: sqlite3.OperationalError, path: Path | None = None) -> str:
    message = str(exc)
    if "full" in message:
        return "history not saved: the disk is full"
    if "locked" in message or "busy" in message:
        return "history not saved: the database is locked by another qwq"
    cause = disk_cause(path) if path is not None else None
    if cause is None and "readonly" in message:
        cause = "the database is read-only"
    return f"history not saved: {cause} ({message})" if cause else f"history not saved: {message}"


def transcript_markdown(title: str, model: str, turns: list[Turn]) -> str:
    """A readable Markdown transcript; thinking goes in collapsed <details> blocks."""
    lines = [f"# {title or 'Conversation'}", ""]
    if model:
        lines += [f"Model: `{model}`", ""]
    for turn in turns:
        lines += [f"## {turn.idx}. User", "", turn.prompt.strip(), ""]
        if turn.thinking.strip():
            lines += [
                "<details><summary>Thinking"
                + (f" ({turn.thinking_tokens:,} tokens)" if turn.thinking_tokens else "")
                + "</summary>",
                "",
                turn.thinking.strip(),
                "",
                "</details>",
                "",
            ]
        heading = "Assistant" if turn.strategy in ("", "direct") else f"Assistant ({turn.strategy})"
        lines += [f"## {turn.idx}. {heading}", "", turn.answer.strip() or "_(no answer)_", ""]
        if turn.stop_reason != "eos":
            lines += [f"_stopped: {turn.stop_reason}_", ""]
    return "\n".join(lines).rstrip() + "\n"
