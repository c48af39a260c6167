"""Append-only JSONL files (results, banks) read back while a writer may still be appending, or after a crash."""

from __future__ import annotations

import json
from pathlib import Path


def complete_lines(path: Path, *, repair: bool = False) -> list[bytes]:
    """The file's complete lines: a tail without its newline counts only if it is a whole JSON record (else it is
    being written, or was torn by a crash). `repair` (a writer about to append) mends the tail on disk too: a whole
    record gets its newline, a torn one is cut off."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    tail = data[end:]
    if not tail.strip():
        return data.splitlines()
    try:
        json.loads(tail)
    except ValueError:
        if repair:
            with path.open("r+b") as handle:  # that record is simply made again
                handle.truncate(end)
        return data[:end].splitlines()
    if repair:
        with path.open("ab") as handle:
            handle.write(b"\n")
    return data.splitlines()
