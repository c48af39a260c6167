"""Benchmark problems (GSM8K, MATH-500, MBPP or any such JSONL file) as one Problem type."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwq_local.errors import ExitCode, InputFileError, UsageError, read_regular_file

DATA_FILES = {
    "gsm8k": "gsm8k_test_dev500.jsonl",
    "gsm8k-train": "gsm8k_train_clean.jsonl",
    "math500": "math500_clean.jsonl",
    "mbpp": "mbpp_test_clean.jsonl",
}
KINDS = ("gsm8k", "math", "mbpp")


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: what the model is asked and what its reply is checked against."""

    id: str
    kind: str  # gsm8k | math | mbpp
    prompt: str  # the problem text given to the model (build_question adds the format's instruction)
    answer: str  # the reference answer; for mbpp the reference solution's code
    tests: tuple[str, ...] = ()  # mbpp asserts
    setup: str = ""  # mbpp test_setup_code, run between the solution and the asserts
    format: str = "math"  # math | code, for qwq_local.problems.prompts.build_question


def default_data_dir() -> Path | None:
    """$QWQ_DATA_DIR, else the first existing shared/data beside or above the cwd or the repo."""
    env = os.environ.get("QWQ_DATA_DIR")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    for base in (Path.cwd(), repo):
        for candidate in (base / "shared" / "data", base.parent / "shared" / "data"):
            if candidate.is_dir():
                return candidate
    return None


def _data_path(data: str, data_dir: Path | None) -> Path:
    """The file `data` names: a known data set in the data dir, or a .jsonl path."""
    if data in DATA_FILES:
        folder = data_dir or default_data_dir()
        if folder is None:
            raise InputFileError(
                f"no data directory for {data}: set QWQ_DATA_DIR to the folder holding {DATA_FILES[data]}",
                ExitCode.FILE_NOT_FOUND,
            )
        return folder / DATA_FILES[data]
    if data.endswith(".jsonl") or os.sep in data or Path(data).exists():
        return Path(data).expanduser()
    raise UsageError(f"unknown data set {data!r}: use one of {', '.join(DATA_FILES)} or a .jsonl file")


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file."""
    data = read_regular_file(path, "data file")
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputFileError(f"{path}:{number}: not UTF-8 text (a binary file?)", ExitCode.EMPTY_INPUT) from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as error:
            message = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deeply"
            raise InputFileError(f"{path}:{number}: not valid JSON ({message})", ExitCode.BAD_DATA) from None
        if not isinstance(record, dict):
            raise InputFileError(f"{path}:{number}: expected a JSON object", ExitCode.BAD_DATA)
        try:  # a \ud800 escape loads as a lone surrogate, which no results file could then be written with
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InputFileError(f"{path}:{number}: a \\uD800-\\uDFFF escape that is not half of a pair",
                                 ExitCode.BAD_DATA) from None
        yield number, record


def _problem(record: dict[str, Any], where: str, default_id: str) -> Problem:
    """The Problem a record describes; its kind guessed from its fields."""
    if "id" in record:
        ident = str(record["id"])
    else:
        ident = f"mbpp_{record['task_id']}" if "task_id" in record else default_id
    if "text" in record and "test_list" in record:
        tests = record["test_list"]
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise InputFileError(f"{where}: test_list must be a list of assert strings", ExitCode.BAD_DATA)
        text = str(record["text"]).strip()
        listed = "\n".join(tests)
        return Problem(
            id=ident,
            kind="mbpp",
            prompt=f"{text}\nYour code should pass these tests:\n\n{listed}",
            answer=str(record.get("code", "")),
            tests=tuple(tests),
            setup=str(record.get("test_setup_code") or ""),
            format="code",
        )
    for field, kind in (("question", "gsm8k"), ("problem", "math")):
        if field in record and "answer" in record:
            return Problem(id=ident, kind=kind, prompt=str(record[field]), answer=str(record["answer"]))
    raise InputFileError(f"{where}: expected fields question/answer, problem/answer or text/test_list",
                         ExitCode.BAD_DATA)


def problem_seed(problem_id: str, base: int = 0) -> int:
    """A sampling seed fixed by the problem (and `base`): the same draws for it whatever ran before."""
    return (zlib.crc32(problem_id.encode()) ^ base) & 0x7FFFFFFF


def load_problems(data: str, limit: int | None = None, data_dir: Path | None = None) -> list[Problem]:
    """The first `limit` problems (all if None) of a named data set or a JSONL file."""
    if limit is not None and limit < 0:
        raise UsageError(f"limit must be 0 or more, not {limit}")
    path = _data_path(data, data_dir)
    problems: list[Problem] = []
    for number, record in _records(path):
        if limit is not None and len(problems) >= limit:
            break
        problems.append(_problem(record, f"{path}:{number}", f"{path.stem}_{number}"))
    if not problems and limit != 0:
        raise InputFileError(f"{path} holds no problems", ExitCode.EMPTY_INPUT)
    return problems
