"""A crash-safe, resumable store of Q-value labels (one JSON line per state) for `qwq train-head`."""

# File layout: a header line, then per committed problem its row lines followed by one commit line:
#   {"kind": "header", "format": "qwq_local-labels", "version": 1}
#   {"kind": "row", "problem_id": ..., "step_index": ..., "step_text": ..., "q_max": ..., "q_mean": ...,
#    "n_rollouts": ..., "correct": [...], "n_embd": N, "hidden": base64 of N little-endian float32,
#    "terminal": true (only at a reply's end)}
#   {"kind": "done", "problem_id": ..., "n_rows": K, "model": {"file": NAME, "size": BYTES}}
# Each append is written in one go, then flushed and fsynced. Rows count only once their commit line is there:
# a torn tail, or rows left without a commit by a crash, are ignored on reading and cut off before the next append.
# A problem committed twice keeps its latest rows. The commit line names the model whose hidden states the rows hold
# (absent in stores written before it did): a store refuses rows of another model, whose states would not fit.

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from qwq_local.errors import ExitCode, HeadMismatchError, InputFileError

def lock_path(path: Path) -> Path:
    """The lock file a label store's writers take turns on."""
    return path.with_name(path.name + ".lock")


FORMAT = "qwq_local-labels"
VERSION = 1
HEADER = (json.dumps({"kind": "header", "format": FORMAT, "version": VERSION}) + "\n").encode()
MAX_STEP_CHARS = 500
_ROW_FIELDS: dict[str, type | tuple[type, ...]] = {
    "problem_id": str, "step_index": int, "step_text": str, "q_max": (int, float), "q_mean": (int, float),
    "n_rollouts": int, "correct": list, "n_embd": int, "hidden": str,
}


@dataclass
class LabelRow:
    """One (problem, step) state: the policy's hidden state there and what rollouts from it scored."""

    problem_id: str
    step_index: int
    step_text: str
    q_max: float  # 1.0 when any rollout from this state reached the right answer
    q_mean: float  # fraction of rollouts that did
    n_rollouts: int
    correct: list[bool]
    hidden: np.ndarray  # float32 [n_embd]
    terminal: bool = False  # the state at a reply's end (its own outcome), not after a step inside it

    def to_json(self) -> str:
        hidden = np.asarray(self.hidden, dtype="<f4")
        if hidden.ndim != 1 or hidden.size == 0:
            raise ValueError(f"hidden state of problem {self.problem_id!r} step {self.step_index} must be a "
                             f"non-empty 1-D array, got shape {hidden.shape}")
        return json.dumps({
            "kind": "row", "problem_id": self.problem_id, "step_index": int(self.step_index),
            "step_text": self.step_text[:MAX_STEP_CHARS], "q_max": float(self.q_max), "q_mean": float(self.q_mean),
            "n_rollouts": int(self.n_rollouts), "correct": [bool(c) for c in self.correct],
            "n_embd": int(hidden.size), "hidden": base64.b64encode(hidden.tobytes()).decode("ascii"),
            **({"terminal": True} if self.terminal else {}),
        }, ensure_ascii=False)


@dataclass
class _Scan:
    """What the committed part of the file holds; `end` is the byte offset just past the last commit."""

    batches: dict[str, list[tuple[dict[str, Any], int, int]]] = field(default_factory=dict)  # (row, offset, length)
    end: int = 0
    size: int = 0
    n_embd: int | None = None
    model: dict[str, Any] | None = None  # named by the last commit line that names one


def model_identity(path: Path) -> dict[str, Any]:
    """What a label store records of the model file its hidden states come from (cheap: no hashing)."""
    return {"file": Path(path).name, "size": Path(path).stat().st_size}


class LabelStore:
    """Append-only label rows on disk; survives crashes and resumes where a run stopped.

    `model` (see `model_identity`) is written with each commit; a store that names another model is refused.
    """

    def __init__(self, path: Path, *, model: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.model = model
        self._scan: _Scan | None = None

    def check_model(self) -> None:
        """Raise HeadMismatchError when the store holds labels of a model other than `self.model`."""
        _check_model(self.path, self._current().model, self.model)

    def done_problems(self) -> set[str]:
        """Problems whose rows are all committed (a resumed run skips them)."""
        return set(self._current().batches)

    def append(self, rows: Sequence[LabelRow], *, problem_id: str | None = None) -> None:
        """Commit rows, one problem after another; `problem_id` marks a problem done even with no rows."""
        if problem_id is not None:
            stray = {r.problem_id for r in rows} - {problem_id}
            if stray:
                raise ValueError(f"rows of problem(s) {sorted(stray)} appended as problem {problem_id!r}")
            by_problem: dict[str, list[LabelRow]] = {problem_id: list(rows)}
        else:
            by_problem = {}
            for row in rows:
                by_problem.setdefault(row.problem_id, []).append(row)
        if not by_problem:
            return
        n_embds = {np.asarray(r.hidden).size for batch in by_problem.values() for r in batch}
        encoded = {pid: [(row.to_json() + "\n").encode() for row in batch] for pid, batch in by_problem.items()}
        commits = {pid: _commit_line(pid, len(batch), self.model) for pid, batch in encoded.items()}

        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with FileLock(lock_path(self.path)), self.path.open("ab") as f:  # one writer at a time, on every OS
            scan = self._current()
            _check_model(self.path, scan.model, self.model)
            known = n_embds | ({scan.n_embd} if scan.n_embd is not None else set())
            if len(known) > 1:
                raise ValueError(f"hidden states of different sizes {sorted(known)} in one label store {self.path}")
            if scan.size > scan.end:  # a torn or uncommitted tail from a crash: cut it off
                f.truncate(scan.end)
            chunks = [HEADER] if scan.end == 0 else []
            offset = scan.end + len(HEADER) if scan.end == 0 else scan.end
            added: dict[str, list[tuple[dict[str, Any], int, int]]] = {}
            for pid, lines in encoded.items():
                added[pid] = []
                for line in lines:
                    added[pid].append((_summary(json.loads(line)), offset, len(line)))
                    offset += len(line)
                chunks += lines + [commits[pid]]
                offset += len(commits[pid])
            f.write(b"".join(chunks))
            f.flush()
            os.fsync(f.fileno())
            if f.tell() != offset:
                self._scan = None  # pragma: no cover - the file changed under the lock; rescan on the next read
                return
        if created:
            _fsync_dir(self.path.parent)
        for pid, batch in added.items():
            scan.batches.pop(pid, None)
            scan.batches[pid] = batch
        scan.end = scan.size = offset
        scan.model = self.model or scan.model
        if known:
            scan.n_embd = known.pop()

    def rows(self) -> list[LabelRow]:
        """Every committed row, problems in commit order (one committed again sits at its latest place)."""
        return [
            LabelRow(
                problem_id=row["problem_id"], step_index=row["step_index"], step_text=row["step_text"],
                q_max=float(row["q_max"]), q_mean=float(row["q_mean"]), n_rollouts=row["n_rollouts"],
                correct=[bool(c) for c in row["correct"]], hidden=_decode(row), terminal=row.get("terminal") is True,
            )
            for row in self._committed_rows()
        ]

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(X [n, n_embd] float32, q_max [n], q_mean [n], problem ids [n]) of every committed row."""
        rows = self._committed_rows()
        n_embd = self._current().n_embd or 0
        X = np.empty((len(rows), n_embd), dtype=np.float32)
        for i, row in enumerate(rows):
            X[i] = _decode(row)
        y_max = np.array([row["q_max"] for row in rows], dtype=np.float64)
        y_mean = np.array([row["q_mean"] for row in rows], dtype=np.float64)
        groups = np.array([row["problem_id"] for row in rows], dtype=str)
        return X, y_max, y_mean, groups

    def __len__(self) -> int:
        return sum(len(batch) for batch in self._current().batches.values())

    def _committed_rows(self) -> list[dict[str, Any]]:
        scan = self._current()
        rows: list[dict[str, Any]] = []
        if not scan.batches:  # no file yet, or nothing committed in it
            return rows
        with self.path.open("rb") as f:
            for batch in scan.batches.values():
                for _, offset, length in batch:
                    f.seek(offset)
                    rows.append(json.loads(f.read(length)))
        return rows

    def _current(self) -> _Scan:
        """The committed state of the file, rescanned when it changed on disk since the last look."""
        size = self.path.stat().st_size if self.path.is_file() else 0
        if self._scan is None or self._scan.size != size:
            self._scan = self._read_scan()
        return self._scan

    def _read_scan(self) -> _Scan:
        scan = _Scan()
        if self.path.is_dir():
            raise InputFileError(f"label store {self.path} is a directory", ExitCode.IS_A_DIRECTORY)
        if not self.path.is_file():
            return scan
        pending: list[tuple[dict[str, Any], int, int]] = []
        broken = False  # a bad line inside the pending batch: the whole batch is dropped at its commit line
        with self.path.open("rb") as f:
            first = f.readline()
            scan.size = os.fstat(f.fileno()).st_size
            if first != HEADER:
                if first.endswith(b"\n") or not HEADER.startswith(first):
                    raise InputFileError(f"{self.path} is not a qwq_local label store (its first line is not "
                                         f"the {FORMAT} header); pick another path", ExitCode.BAD_DATA)
                return scan  # only a torn header: nothing committed yet
            scan.end = offset = len(first)
            for line in f:
                length = len(line)
                if not line.endswith(b"\n"):
                    break  # torn last line
                item = _parse(line)
                if item is None:
                    broken = True
                elif item["kind"] == "row" and _valid_row(item):
                    pending.append((item, offset, length))
                elif item["kind"] == "done" and isinstance(item.get("problem_id"), str):
                    pid = item["problem_id"]
                    if not broken and item.get("n_rows") == len(pending) and all(
                        r["problem_id"] == pid for r, _, _ in pending
                    ):
                        scan.batches.pop(pid, None)
                        scan.batches[pid] = [(_summary(r), o, n) for r, o, n in pending]
                        if pending:
                            scan.n_embd = pending[0][0]["n_embd"]
                        if isinstance(item.get("model"), dict):
                            scan.model = item["model"]
                    pending, broken = [], False
                    scan.end = offset + length
                else:
                    broken = True
                offset += length
        return scan


def _commit_line(problem_id: str, n_rows: int, model: dict[str, Any] | None) -> bytes:
    commit: dict[str, Any] = {"kind": "done", "problem_id": problem_id, "n_rows": n_rows}
    if model is not None:
        commit["model"] = model
    return (json.dumps(commit, ensure_ascii=False) + "\n").encode()


def _check_model(path: Path, stored: dict[str, Any] | None, wanted: dict[str, Any] | None) -> None:
    if stored is not None and wanted is not None and stored != wanted:
        raise HeadMismatchError(
            f"label store {path} holds labels of model {stored.get('file')} ({stored.get('size')} bytes), "
            f"not {wanted.get('file')} ({wanted.get('size')} bytes): pick another --labels path")


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        item = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return item if isinstance(item, dict) and item.get("kind") in ("row", "done") else None


def _valid_row(item: dict[str, Any]) -> bool:
    if not all(isinstance(item.get(k), t) and not isinstance(item.get(k), bool) for k, t in _ROW_FIELDS.items()):
        return False
    n_embd, hidden = int(item["n_embd"]), str(item["hidden"])
    return n_embd > 0 and len(hidden) == 4 * math.ceil(n_embd * 4 / 3)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its hidden state (kept in memory while scanning)."""
    return {k: v for k, v in row.items() if k != "hidden"}


def _decode(row: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(row["hidden"]), dtype="<f4").astype(np.float32)


def _fsync_dir(directory: Path) -> None:
    """Persist a new file's directory entry (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
