"""Every failure a user can cause, as one exception family with a distinct exit code."""

from __future__ import annotations

import os
import stat
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Process exit codes; each user-facing failure has its own, and 1 is only ever an unexpected one (a bug)."""

    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    FILE_NOT_FOUND = 3
    EMPTY_INPUT = 4
    IS_A_DIRECTORY = 5
    NOT_GGUF = 6
    CORRUPT_MODEL = 7
    UNKNOWN_MODEL = 8
    NOT_PULLED_OFFLINE = 9
    HUB_UNREACHABLE = 10
    DISK_FULL = 11
    CONTEXT_TOO_LARGE = 12
    OUT_OF_MEMORY = 13
    CHECKSUM_MISMATCH = 14
    HEAD_MISMATCH = 15
    NOT_A_REGULAR_FILE = 16
    PERMISSION_DENIED = 17
    NOT_A_DIRECTORY = 18
    BAD_DATA = 19
    HISTORY_UNAVAILABLE = 20
    BAD_HUB_NAME = 21
    BUSY = 22
    HUB_ACCESS_DENIED = 23
    BAD_CATALOG = 24
    ENGINE_UNREACHABLE = 25
    ENGINE_BAD_REPLY = 26
    MISSING_DEPENDENCY = 27
    DOWNLOAD_NOT_CONFIRMED = 28
    INTERRUPTED = 130


class QwqError(Exception):
    """An error with a one-line message for the user and its own exit code (never 1, which means a bug)."""

    exit_code: ExitCode  # a subclass sets it, or each raise gives one

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code
        if getattr(self, "exit_code", ExitCode.UNEXPECTED) in (ExitCode.OK, ExitCode.UNEXPECTED):
            raise TypeError(f"{type(self).__name__}({message!r}) needs its own exit code")


class InputFileError(QwqError):
    """A problem file that is missing, empty or a directory."""


class ModelFileError(QwqError):
    """A model file that is not GGUF, is truncated or cannot be loaded."""

    exit_code = ExitCode.CORRUPT_MODEL


class UnknownModelError(QwqError):
    exit_code = ExitCode.UNKNOWN_MODEL


class NotPulledError(QwqError):
    exit_code = ExitCode.NOT_PULLED_OFFLINE


class HubUnreachableError(QwqError):
    exit_code = ExitCode.HUB_UNREACHABLE


class DiskFullError(QwqError):
    exit_code = ExitCode.DISK_FULL


class ChecksumError(QwqError):
    exit_code = ExitCode.CHECKSUM_MISMATCH


class ContextTooLargeError(QwqError):
    exit_code = ExitCode.CONTEXT_TOO_LARGE


class OutOfMemoryError(QwqError):
    exit_code = ExitCode.OUT_OF_MEMORY


class HeadMismatchError(QwqError):
    exit_code = ExitCode.HEAD_MISMATCH


class EngineUnreachableError(QwqError):
    """A remote engine that cannot be reached, keeps refusing (429/503) or stalls past its timeout."""

    exit_code = ExitCode.ENGINE_UNREACHABLE


class EngineReplyError(QwqError):
    """A remote engine that answers, but not as an OpenAI-compatible completions server would."""

    exit_code = ExitCode.ENGINE_BAD_REPLY


class UsageError(QwqError):
    exit_code = ExitCode.USAGE


def read_regular_file(path: Path, what: str = "file") -> bytes:
    """The bytes of `path`; a directory, FIFO, device, missing or unreadable file is an InputFileError.

    Opened without blocking and checked on the open descriptor, so a FIFO never hangs the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputFileError(f"{what} not found, no such file: {path}", ExitCode.FILE_NOT_FOUND) from None
    except IsADirectoryError:
        raise InputFileError(f"{path} is a directory, not a {what}", ExitCode.IS_A_DIRECTORY) from None
    except PermissionError:
        raise InputFileError(f"cannot read {path}: permission denied", ExitCode.PERMISSION_DENIED) from None
    except OSError as error:
        raise InputFileError(f"cannot open {path}: {error.strerror}", ExitCode.NOT_A_REGULAR_FILE) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise InputFileError(f"{path} is a directory, not a {what}", ExitCode.IS_A_DIRECTORY)
        raise InputFileError(f"{path} is not a regular file (a pipe or device), not a {what}",
                             ExitCode.NOT_A_REGULAR_FILE)
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read()
        except OSError as error:
            raise InputFileError(f"cannot read {path}: {error.strerror}", ExitCode.PERMISSION_DENIED) from None
