"""Partial files, checksums and atomic promotion shared by every download source."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

from qwq_local.errors import ChecksumError, DiskFullError, ExitCode, QwqError

CHUNK = 8 * 1024 * 1024


def part_path(dest: Path) -> Path:
    """The in-progress file for `dest`: never loaded as a model, kept across interruptions."""
    return dest.with_name(dest.name + ".part")


@contextmanager
def download_lock(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock on dest's download so two pulls never append to the same part file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = dest.with_name(dest.name + ".lock")
    try:
        held = FileLock(lock, timeout=0).acquire()  # on every OS
    except Timeout:
        raise QwqError(f"another pull is already downloading {dest.name} (lock {lock})",
                       ExitCode.BUSY) from None
    try:
        with held:
            yield
    finally:
        lock.unlink(missing_ok=True)  # not left among the model files


def open_part(part: Path) -> BinaryIO:
    """Open a part file for appending; the one place downloads write through (tests fake a full disk here)."""
    part.parent.mkdir(parents=True, exist_ok=True)
    return part.open("ab")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file (the hub's etag for files not stored in LFS)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_or_discard(
    path: Path, *, what: str, size: int | None = None, sha256: str | None = None, git_sha1: str | None = None
) -> None:
    """Check size and digest; on a mismatch delete the file so nothing invalid is left behind."""
    problem = None
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        problem = f"size {actual_size} bytes, expected {size}"
    elif sha256 is not None and (actual := sha256_file(path)) != sha256.lower():
        problem = f"sha256 {actual}, expected {sha256}"
    elif git_sha1 is not None and (actual := git_blob_sha1(path)) != git_sha1.lower():
        problem = f"git sha1 {actual}, expected {git_sha1}"
    if problem:
        path.unlink(missing_ok=True)
        raise ChecksumError(f"checksum mismatch for {what}: {problem}; the bad download was removed, pull again")


def promote(part: Path, dest: Path) -> Path:
    """Atomically move a verified part file to its final name."""
    os.replace(part, dest)
    return dest


def ensure_free_space(directory: Path, needed: int, what: str) -> None:
    """Fail early with DiskFullError when the target filesystem cannot hold `needed` more bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise DiskFullError(
            f"not enough disk space for {what}: needs {needed / 1e9:.2f} GB more, "
            f"{free / 1e9:.2f} GB free in {directory}"
        )


def _disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in `exc` or what caused it (HTTP clients wrap a failed write in their own errors)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def is_disk_full(exc: BaseException) -> bool:
    return _disk_full_cause(exc) is not None


def disk_full_error(exc: BaseException, part: Path) -> DiskFullError:
    """DiskFullError for a write that ran out of space; the partial file stays for a resume."""
    cause = _disk_full_cause(exc)
    reason = cause.strerror if cause is not None else str(exc)
    return DiskFullError(f"disk full while writing {part.name} ({reason}); free space and pull again to resume")
