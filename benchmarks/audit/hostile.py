"""Issue 25's audit, runnable again: bad inputs and faults across every command, and hostile programs in the sandbox.

    python benchmarks/audit/hostile.py            # every case (a few minutes; the real-model cases load the tiny GGUFs)
    python benchmarks/audit/hostile.py --no-model # without the cases that need ~/.cache/qwq_local/models

Each `qwq` case runs as a user would run it (`python -m qwq_local ...`, its own data dir, offline) and is judged
from outside: a clean error is one line (`error: ...`, or click's usage block ending in `Error: ...`) with the
exit code README's table gives it; a case that must go on (a corrupt history, a bad chat line) exits 0 with at most
one warning. Data lost and escapes are checked on the host after the run. It prints one line per case and totals.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from qwq_local.errors import ExitCode  # noqa: E402

MODELS = Path(os.environ.get("QWQ_TEST_MODELS_DIR", Path.home() / ".cache" / "qwq_local" / "models"))
SMOLLM = MODELS / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN = MODELS / "qwen2.5-coder-0.5b" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"  # slower and wordier: still going
E = ExitCode


@dataclass
class Outcome:
    """What one case did, judged."""

    name: str
    verdict: str  # clean | went-on | wrong-code | unexpected | traceback | hang
    code: int | None
    detail: str = ""
    lost: str = ""  # what data was lost, if any
    escaped: str = ""  # what got out of the sandbox, if anything


@dataclass
class Case:
    """A `qwq` command line, what it must end with, and a check of the host afterwards."""

    name: str
    args: list[str]
    expect: int
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes | None = None
    timeout: float = 60
    prefix: list[str] = field(default_factory=list)  # e.g. setpriv to drop root's file-permission bypass
    after: Callable[[], str] | None = None  # "" when nothing was lost, else what was
    interrupt_after: float | None = None  # send SIGINT after this many seconds (Ctrl-C)
    needs_model: bool = False
    goes_on: bool = False  # must carry on past the fault: `expect` at the end, at most one warning or error line


def run_case(case: Case, base_env: dict[str, str]) -> Outcome:
    command = [*case.prefix, sys.executable, "-m", "qwq_local", *case.args]
    env = {**base_env, **case.env}
    for key, value in list(env.items()):
        if value == "<unset>":
            del env[key]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE if case.stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=base_env["AUDIT_CWD"],
                            start_new_session=True)
    try:
        if case.interrupt_after is not None:
            time.sleep(case.interrupt_after)
            proc.send_signal(signal.SIGINT)
        out, err_bytes = proc.communicate(case.stdin, timeout=case.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Outcome(case.name, "hang", None, f"no end after {case.timeout:.0f} s")
    err = err_bytes.decode("utf-8", "replace")
    lost = case.after() if case.after else ""
    code = proc.returncode
    lines = [line for line in err.splitlines() if line.strip()]
    warnings = [line for line in lines if line.startswith(("warning:", "note:"))]
    others = [line for line in lines if line not in warnings]
    last = others[-1] if others else (warnings[-1] if warnings else "")
    if "Traceback" in err:
        return Outcome(case.name, "traceback", code, last, lost)
    if code == E.UNEXPECTED:
        return Outcome(case.name, "unexpected", code, last, lost)
    if code != case.expect:
        return Outcome(case.name, "wrong-code", code, f"expected {case.expect}: {last}", lost)
    if case.goes_on:
        said = [line for line in lines if line.startswith(("warning:", "error:"))]
        ok = len(said) <= 1
        return Outcome(case.name, "went-on" if ok else "wrong-code", code,
                       (said[0] if said else "nothing said") if ok else f"{len(said)} warnings", lost)
    if code == 0:
        ok = len(warnings) <= 1
        return Outcome(case.name, "went-on" if ok else "wrong-code", code,
                       (warnings[0] if warnings else "no warning") if ok else f"{len(warnings)} warnings", lost)
    one_line = (len(others) == 1 and others[0].startswith(("error:", "interrupted"))) or (
        bool(others) and others[0].startswith("Usage: qwq") and others[-1].startswith("Error:"))
    return Outcome(case.name, "clean" if one_line else "wrong-code", code, last if one_line else err[-200:], lost)


# ---------------------------------------------------------------- the cases


def qwq_cases(tmp: Path, with_model: bool) -> list[Case]:
    """Bad inputs and faults across every command."""
    offline = ["--model", "qwen2.5-coder-0.5b", "--models-dir", str(tmp / "empty-models")]
    problem = tmp / "problem.md"
    problem.write_text("What is 2 + 2?\n")
    empty = tmp / "empty.md"
    empty.write_text("")
    binary = tmp / "binary.md"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    fifo = tmp / "fifo.md"
    os.mkfifo(fifo)
    secret = tmp / "secret.md"
    secret.write_text("2+2?")
    secret.chmod(0o000)
    not_dir = tmp / "a-file"
    not_dir.write_text("x")
    not_gguf = tmp / "not.gguf"
    not_gguf.write_text("hello")
    truncated = tmp / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)
    data_binary = tmp / "data.jsonl"
    data_binary.write_bytes(b'{"question": "1+1?", "answer": "2"}\n\x89PNG\r\n\x1a\n\xff\xfe\x00garbage\n')
    data_bad_json = tmp / "bad.jsonl"
    data_bad_json.write_text('{"question": "1+1?", "answer": "2"}\n{not json\n')
    data_no_fields = tmp / "nofields.jsonl"
    data_no_fields.write_text('{"q": 1}\n')
    data_good = tmp / "good.jsonl"
    data_good.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    data_list = tmp / "list.jsonl"
    data_list.write_text("[1, 2]\n")
    huge_template = tmp / "huge.jinja"
    huge_template.write_text("{{ 'x' }}" * (2 * 2**20 // 9))
    broken_template = tmp / "broken.jinja"
    broken_template.write_text("{% for m in messages %}{{ m.content }")
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.getuid() == 0 else []

    def config(name: str, line: str) -> dict[str, str]:
        path = tmp / f"config-{name}.toml"
        path.write_text(line + "\n")
        return {"QWQ_CONFIG": str(path)}

    cases = [
        Case("solve: missing file", ["solve", str(tmp / "nope.md"), *offline], E.FILE_NOT_FOUND),
        Case("solve: empty file", ["solve", str(empty), *offline], E.EMPTY_INPUT),
        Case("solve: binary file", ["solve", str(binary), *offline], E.EMPTY_INPUT),
        Case("solve: a directory", ["solve", str(tmp), *offline], E.IS_A_DIRECTORY),
        Case("solve: a FIFO as the problem file", ["solve", str(fifo), *offline], E.NOT_A_REGULAR_FILE, timeout=20),
        Case("solve: /dev/zero as the problem file", ["solve", "/dev/zero", *offline], E.NOT_A_REGULAR_FILE,
             timeout=20),
        Case("solve: non-UTF-8 stdin", ["solve", "-", *offline], E.EMPTY_INPUT, stdin=b"2+2? \xff\n"),
        Case("solve: empty stdin", ["solve", "-", *offline], E.EMPTY_INPUT, stdin=b""),
        Case("solve: --temperature nan", ["solve", str(problem), "--temperature", "nan", *offline], E.USAGE),
        Case("solve: --temperature inf", ["solve", str(problem), "--temperature", "inf", *offline], E.USAGE),
        Case("solve: --temperature -inf", ["solve", str(problem), "--temperature", "-inf", *offline], E.USAGE),
        Case("solve: --top-p 2", ["solve", str(problem), "--top-p", "2", *offline], E.USAGE),
        Case("solve: --candidates 100000", ["solve", str(problem), "--strategy", "astar", "--candidates", "100000",
                                            *offline], E.USAGE, timeout=30),
        Case("solve: --beam 100000", ["solve", str(problem), "--strategy", "astar", "--beam", "100000", *offline],
             E.USAGE, timeout=30),
        Case("solve: --trajectories 100000", ["solve", str(problem), "--strategy", "sc", "--trajectories", "100000",
                                              *offline], E.USAGE, timeout=30),
        Case("solve: --lambda nan", ["solve", str(problem), "--strategy", "astar", "--lambda", "nan", *offline],
             E.USAGE),
        Case("solve: --ctx -5", ["solve", str(problem), "--ctx", "-5", *offline], E.USAGE),
        Case("solve: unknown strategy", ["solve", str(problem), "--strategy", "dfs", *offline], E.USAGE),
        Case("solve: unknown scorer", ["solve", str(problem), "--strategy", "astar", "--scorer", "magic", *offline],
             E.USAGE),
        Case("solve: --chat-template missing", ["solve", str(problem), "--chat-template", str(tmp / "no.jinja"),
                                                *offline], E.FILE_NOT_FOUND),
        Case("solve: --chat-template a directory", ["solve", str(problem), "--chat-template", str(tmp), *offline],
             E.IS_A_DIRECTORY),
        Case("solve: --chat-template binary", ["solve", str(problem), "--chat-template", str(binary), *offline],
             E.BAD_DATA),
        Case("solve: --chat-template of 2 MiB", ["solve", str(problem), "--chat-template", str(huge_template),
                                                 *offline], E.BAD_DATA),
        Case("solve: --chat-template that does not compile", ["solve", str(problem), "--chat-template",
                                                              str(broken_template), *offline], E.BAD_DATA),
        Case("solve: --chat-template /dev/zero", ["solve", str(problem), "--chat-template", "/dev/zero", *offline],
             E.NOT_A_REGULAR_FILE, timeout=20),
        Case("solve: --chat-template a FIFO", ["solve", str(problem), "--chat-template", str(fifo), *offline],
             E.NOT_A_REGULAR_FILE, timeout=20),
        Case("solve: --widen -1", ["solve", str(problem), "--strategy", "astar", "--widen", "-1", *offline], E.USAGE),
        Case("solve: --settle nan", ["solve", str(problem), "--strategy", "astar", "--settle", "nan", *offline],
             E.USAGE),
        Case("bench accuracy: --offset past the data", ["bench", "accuracy", "--data", str(data_good), "--offset",
                                                        "5", *offline], E.USAGE),
        Case("solve: unknown model", ["solve", str(problem), "--model", "no-such-model"], E.UNKNOWN_MODEL),
        Case("solve: not pulled, offline", ["solve", str(problem), *offline], E.NOT_PULLED_OFFLINE),
        Case("solve: not a GGUF", ["solve", str(problem), "--model", str(not_gguf)], E.NOT_GGUF),
        Case("solve: truncated GGUF", ["solve", str(problem), "--model", str(truncated)], E.CORRUPT_MODEL),
        Case("solve: model is a directory", ["solve", str(problem), "--model", str(tmp)], E.IS_A_DIRECTORY),
        Case("config: temperature = true", ["solve", str(problem), *offline[:2]], E.USAGE,
             env=config("bool", "temperature = true")),
        Case("config: models_dir = 42", ["solve", str(problem), *offline[:2]], E.USAGE,
             env=config("42", "models_dir = 42")),
        Case("config: ctx = 2048.5", ["solve", str(problem), *offline[:2]], E.USAGE,
             env=config("float", "ctx = 2048.5")),
        Case("config: top_p = nan", ["solve", str(problem), *offline[:2]], E.USAGE, env=config("nan", "top_p = nan")),
        Case("config: model = [1, 2]", ["solve", str(problem), *offline[:2]], E.USAGE,
             env=config("list", "model = [1, 2]")),
        Case("config: not TOML", ["solve", str(problem), *offline[:2]], E.USAGE, env=config("broken", "[[[")),
        Case("env: QWQ_TEMPERATURE=nan", ["solve", str(problem), *offline], E.USAGE,
             env={"QWQ_TEMPERATURE": "nan"}),
        Case("env: QWQ_CTX=lots", ["solve", str(problem), *offline], E.USAGE, env={"QWQ_CTX": "lots"}),
        Case("models: QWQ_MODELS_DIR is a file", ["models"], E.NOT_A_DIRECTORY,
             env={"QWQ_MODELS_DIR": str(not_dir)}),
        Case("models: XDG_CACHE_HOME is a file", ["models"], E.NOT_A_DIRECTORY,
             env={"QWQ_MODELS_DIR": "<unset>", "XDG_CACHE_HOME": str(not_dir)}),
        Case("pull: QWQ_MODELS_DIR is a file", ["pull", "smollm2-135m"], E.NOT_A_DIRECTORY,
             env={"QWQ_MODELS_DIR": str(not_dir)}),
        Case("doctor: --models-dir is a file", ["doctor", "--models-dir", str(not_dir)], E.NOT_A_DIRECTORY),
        Case("info: missing file", ["info", str(tmp / "nope.gguf")], E.FILE_NOT_FOUND),
        Case("info: not a GGUF", ["info", str(not_gguf)], E.NOT_GGUF),
        Case("info: truncated GGUF", ["info", str(truncated)], E.CORRUPT_MODEL),
        Case("info: unknown model", ["info", "no-such-model"], E.UNKNOWN_MODEL),
        Case("info: --ctx 10**9", ["info", "qwq-32b", "--ctx", "1000000000"], E.CONTEXT_TOO_LARGE),
        Case("rm: a model never pulled", ["rm", "qwq-32b", "--yes", "--models-dir", str(tmp / "empty-models")],
             E.NOT_PULLED_OFFLINE),
        Case("rm: a path of the user's", ["rm", str(problem), "--yes"], E.USAGE,
             after=lambda: "" if problem.exists() else f"{problem} deleted"),
        Case("bench accuracy: binary --data", ["bench", "accuracy", "--data", str(data_binary), "-s", "direct",
                                               *offline], E.EMPTY_INPUT),
        Case("bench accuracy: bad JSON line", ["bench", "accuracy", "--data", str(data_bad_json), "-s", "direct",
                                               *offline], E.BAD_DATA),
        Case("bench accuracy: lines without fields", ["bench", "accuracy", "--data", str(data_no_fields), "-s",
                                                      "direct", *offline], E.BAD_DATA),
        Case("bench accuracy: a line that is a list", ["bench", "accuracy", "--data", str(data_list), "-s", "direct",
                                                       *offline], E.BAD_DATA),
        Case("bench accuracy: --data a FIFO", ["bench", "accuracy", "--data", str(fifo), "-s", "direct", *offline],
             E.NOT_A_REGULAR_FILE, timeout=20),
        Case("bench accuracy: --data missing", ["bench", "accuracy", "--data", str(tmp / "nope.jsonl"), "-s",
                                                "direct", *offline], E.FILE_NOT_FOUND),
        Case("bench accuracy: bad strategy", ["bench", "accuracy", "-s", "direct,dfs", *offline], E.USAGE),
        Case("bench accuracy: --plot a directory", ["bench", "accuracy", "-s", "direct", "--plot", str(tmp),
                                                    *offline], E.USAGE),
        Case("bench accuracy: --results a directory", ["bench", "accuracy", "--data", str(data_good), "-s",
                                                       "direct", "--results", str(tmp), *offline], E.IS_A_DIRECTORY),
        Case("bench choose: no bank", ["bench", "choose", str(tmp / "no-bank")], E.FILE_NOT_FOUND),
        Case("head info: missing head", ["head", "info", str(tmp / "nope.qhead.gguf")], E.FILE_NOT_FOUND),
        Case("head info: not a GGUF", ["head", "info", str(not_gguf)], E.NOT_GGUF),
        Case("train-head: a test set", ["train-head", "--data", "gsm8k", "--out", str(tmp / "h.gguf"), *offline],
             E.USAGE),
        Case("pull: hf: name climbing out", ["pull", "hf:a/b/../../../../escape_dir/c.gguf", "--models-dir",
                                             str(tmp / "d" / "m2")], E.BAD_HUB_NAME,
             after=lambda: f"{tmp / 'escape_dir'} created" if (tmp / "escape_dir").exists() else ""),
        Case("pull: hf:../../x/y.gguf", ["pull", "hf:../../x/y.gguf", "--models-dir", str(tmp / "d" / "m3")],
             E.BAD_HUB_NAME, after=lambda: f"{tmp / 'x'} created" if (tmp / "x").exists() else ""),
        Case("pull: hf: absolute part", ["pull", "hf:/etc/passwd.gguf", "--models-dir", str(tmp / "d" / "m4")],
             E.BAD_HUB_NAME),
        Case("pull: unknown model", ["pull", "no-such-model"], E.UNKNOWN_MODEL),
        Case("serve: --port 70000", ["serve", "--port", "70000", *offline], E.USAGE),
        Case("serve: 0.0.0.0 without a key", ["serve", "--host", "0.0.0.0", *offline], E.USAGE),
        Case("history show: no such conversation", ["history", "show", "999"], E.USAGE),
        Case("history rm: no such conversation", ["history", "rm", "999", "--yes"], E.USAGE),
        Case("no such command", ["frobnicate"], E.USAGE),
        Case("no such option", ["models", "--bogus"], E.USAGE),
    ]
    if drop and shutil.which("setpriv"):
        cases.append(Case("solve: an unreadable problem file (mode 000)", ["solve", str(secret), *offline],
                          E.PERMISSION_DENIED, prefix=drop))
        cases.append(Case("bench accuracy: an unreadable --data file", ["bench", "accuracy", "--data", str(secret),
                                                                       "-s", "direct", *offline],
                          E.PERMISSION_DENIED, prefix=drop))
    elif not drop:
        cases.append(Case("solve: an unreadable problem file (mode 000)", ["solve", str(secret), *offline],
                          E.PERMISSION_DENIED))
    cases += history_cases(tmp)
    cases += gguf_cases(tmp)
    if with_model and SMOLLM.is_file():
        cases += model_cases(tmp)
    return cases


def history_cases(tmp: Path) -> list[Case]:
    """`qwq history` on a corrupt, random or locked database: its own code, and nothing deleted."""
    cases = []
    for name, make in (("random bytes", _random_db), ("corrupted pages", _corrupt_db)):
        user = tmp / f"user-{name.replace(' ', '-')}"
        user.mkdir()
        make(user / "history.db")
        before = (user / "history.db").read_bytes()
        cases.append(Case(f"history: {name}", ["history"], E.HISTORY_UNAVAILABLE,
                          env={"QWQ_USER_PATH": str(user)},
                          after=lambda u=user, b=before: "" if (u / "history.db").read_bytes() == b
                          else "history.db changed by a read"))
    return cases


def _random_db(path: Path) -> None:
    path.write_bytes(b"\x13\x37 not sqlite at all " * 500)


def _corrupt_db(path: Path) -> None:
    _filled_db(path)
    data = bytearray(path.read_bytes())
    data[4096 * 3: 4096 * 6] = b"\xde\xad\xbe\xef" * (4096 * 3 // 4)
    path.write_bytes(bytes(data))


def _filled_db(path: Path, turns: int = 40) -> None:
    from qwq_local.render.history import History, Turn

    with History(path) as history:
        conversation = None
        for n in range(turns):
            conversation = history.add_turn(conversation, Turn(prompt=f"q{n}", answer="a" * 2000)).conversation_id
        history._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def gguf_cases(tmp: Path) -> list[Case]:
    """Hostile GGUF metadata and Q-value heads, read by `qwq info` and `qwq head info`."""
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        from tests.test_gguf_info import _write_model
    except ImportError as error:
        print(f"audit: no GGUF cases ({error})", file=sys.stderr)
        return []
    hostile = {
        "block_count -1": ({"qwen2.block_count": ("add_int32", -1)}, 0),
        "block_count 2**40": ({"qwen2.block_count": ("add_uint64", 1 << 40)}, 0),
        "embedding_length 2**38": ({"qwen2.embedding_length": ("add_uint64", 1 << 38)}, 0),
        "absurd layers x width": ({"qwen2.block_count": ("add_uint32", 4000),
                                   "qwen2.embedding_length": ("add_uint32", 1 << 20)}, 0),
        "head_count_kv 2**19": ({"qwen2.attention.head_count_kv": ("add_uint32", 1 << 19)}, 0),
        "context_length -5": ({"qwen2.context_length": ("add_int64", -5)}, 0),
        "block_count nan": ({"qwen2.block_count": ("add_float32", float("nan"))}, 0),
        "rope.freq_base inf": ({"qwen2.rope.freq_base": ("add_float32", float("inf"))}, 0),
        "split.count -3": ({"split.count": ("add_int32", -3)}, 0),
        "200,000 nested arrays": ({}, 200_000),
    }
    cases = []
    for n, (name, (numbers, nested)) in enumerate(hostile.items()):
        path = _write_model(tmp / f"hostile-{n}.gguf", numbers, nested=nested)
        cases.append(Case(f"info: GGUF {name}", ["info", str(path)], E.CORRUPT_MODEL, timeout=60))
        if n < 3:
            cases.append(Case(f"solve: GGUF {name}", ["solve", str(tmp / "problem.md"), "--model", str(path)],
                              E.CORRUPT_MODEL, timeout=60))
    counts = _write_model(tmp / "counts.gguf", {})
    data = bytearray(counts.read_bytes())
    data[16:24] = (1 << 62).to_bytes(8, "little")  # n_kv
    counts.write_bytes(bytes(data))
    cases.append(Case("info: GGUF n_kv 2**62", ["info", str(counts)], E.CORRUPT_MODEL))
    cases += _head_cases(tmp)
    return cases


def _head_cases(tmp: Path) -> list[Case]:
    import numpy as np

    from qwq_local.value.qhead import QHeadMeta, QHeadWeights, write_head

    cases = []
    for name, value in (("NaN", float("nan")), ("inf", float("inf"))):
        w = np.zeros(16)
        w[3] = value
        path = tmp / f"head-{name}.qhead.gguf"
        try:
            write_head(path, QHeadWeights(mean=np.zeros(16), std=np.ones(16), w=w, b=[0.0]),
                       QHeadMeta(architecture="qwen2", n_embd=16))
        except (TypeError, AttributeError, ValueError) as error:
            print(f"audit: no {name} head case ({error})", file=sys.stderr)
            continue
        cases.append(Case(f"head info: {name} weights", ["head", "info", str(path)], E.HEAD_MISMATCH))
    return cases


def model_cases(tmp: Path) -> list[Case]:
    """Cases that load the tiny GGUFs: templates, chat with a broken history, results files, Ctrl-C."""
    cases = []
    problem = str(tmp / "problem.md")
    small = ["--model", str(SMOLLM), "--ctx", "512", "--max-tokens", "8"]
    templates = {
        "nested range loop": "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
        "SSTI payload": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "syntax error": "{% for x in %}",
        "huge power": "{{ (7 ** 100000) ** 1000 }}",
        "huge filter": "{{ 'x' | center(2000000000) }}",
        "recursive macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    }
    for n, (name, template) in enumerate(templates.items()):
        target = tmp / f"template-{n}.gguf"
        made = subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--chat-template", template,
                               "--force", str(SMOLLM), str(target)], capture_output=True)
        if made.returncode == 0:
            cases.append(Case(f"solve: chat template {name}", ["solve", problem, "--model", str(target),
                                                                "--ctx", "512", "--max-tokens", "4"],
                              E.CORRUPT_MODEL, timeout=120, needs_model=True))
    for name, make in (("random bytes", _random_db), ("corrupted pages", _corrupt_db)):
        user = tmp / f"chat-user-{name.replace(' ', '-')}"
        user.mkdir()
        make(user / "history.db")
        cases.append(Case(f"chat: a history database of {name} (goes on)", ["chat", *small, "--each-line"],
                          0, env={"QWQ_USER_PATH": str(user)}, stdin=b"hi\nhello\n/exit\n", timeout=180,
                          after=lambda u=user: _saved_turns(u, 2), needs_model=True, goes_on=True))
    locked_user = tmp / "chat-user-locked"
    locked_user.mkdir()
    cases.append(Case("chat: a history database locked past the busy timeout (goes on)", ["chat", *small], 0,
                      env={"QWQ_USER_PATH": str(locked_user), "AUDIT_LOCK": str(locked_user / "history.db")},
                      stdin=b"hi\n/exit\n", timeout=180, needs_model=True, goes_on=True))
    cases.append(Case("chat: a non-UTF-8 line (skipped, goes on, exit 4 at the end)", ["chat", *small],
                      E.EMPTY_INPUT, stdin=b"2+2? \xff\nhi\n/exit\n", timeout=180, needs_model=True, goes_on=True))
    data = tmp / "one.jsonl"
    data.write_text(json.dumps({"id": "p0", "question": "What is 2 + 2?", "answer": "#### 4"}) + "\n")
    results = tmp / "forged.jsonl"
    results.write_text("".join(json.dumps({"problem_id": "p0", "strategy": "direct", "correct": True}) + "\n"
                               for _ in range(4)))
    cases.append(Case("bench accuracy: forged results lines without a setup", [
        "bench", "accuracy", "--data", str(data), "-s", "direct", "--results", str(results), "--json", *small],
        0, timeout=300, needs_model=True, after=lambda: _forged_trusted(results)))
    endless = tmp / "endless.md"  # a reply long enough to be still going when Ctrl-C comes, on an idle machine too
    endless.write_text("Write a complete, fully commented Python implementation of a red-black tree with insert, "
                       "delete, search and an in-order iterator, then unit tests for every method.\n")
    cases.append(Case("solve: Ctrl-C while generating", ["solve", str(endless), "--model", str(QWEN), "--ctx",
                                                         "4096", "--max-tokens", "3000", "--temperature", "0"],
                      E.INTERRUPTED, interrupt_after=8.0, timeout=120, needs_model=True))
    return cases


def _saved_turns(user: Path, want: int) -> str:
    try:
        with sqlite3.connect(user / "history.db") as db:
            count = db.execute("SELECT COUNT(*) FROM turns").fetchone()[0]
    except sqlite3.Error as error:
        return f"the new history database cannot be read ({error})"
    return "" if count >= want else f"{want - count} turns not in the new history database"


def _forged_trusted(results: Path) -> str:
    lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    forged = [r for r in lines if "setup" not in r and r.get("correct") is True]
    kept = [r for r in lines if "setup" in r]
    return "" if kept or not forged else "the forged lines were counted"


# ---------------------------------------------------------------- the sandbox


def sandbox_probes(tmp: Path) -> list[tuple[str, Callable[[], str]]]:
    """Hostile programs run through the real sandbox; each returns what escaped ("" when nothing did)."""
    from qwq_local.problems import sandbox
    from qwq_local.problems.sandbox import run_python

    def unix_socket() -> str:
        path = tmp / f"agent-{time.monotonic_ns()}.sock"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            server.listen(1)
            server.settimeout(0.5)
            run_python(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})\n"
                       "s.sendall(b'secret')\n")
            try:
                server.accept()
                return "connected to a host Unix socket"
            except socket.timeout:
                return ""

    def tcp() -> str:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            server.settimeout(0.5)
            run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {server.getsockname()[1]}), 2)\n")
            try:
                server.accept()
                return "connected to a host TCP port"
            except socket.timeout:
                return ""

    def ctypes_socket() -> str:
        path = tmp / f"agent-c-{time.monotonic_ns()}.sock"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            server.listen(1)
            server.settimeout(0.5)
            addr = str(path).encode()
            run_python(
                "import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "fd = libc.socket(1, 1, 0)\n"
                f"addr = struct.pack('H', 1) + {addr!r} + bytes(108 - {len(addr)})\n"
                "libc.connect(fd, addr, len(addr))\nlibc.write(fd, b'secret', 6)\n")
            try:
                server.accept()
                return "connected to a host Unix socket through libc"
            except socket.timeout:
                return ""

    def writes(target: Path) -> str:
        """What escaped when the program inside tries to write `target` (the file is removed again)."""
        run_python(f"open({str(target)!r}, 'w').write('x')")
        if target.exists():
            target.unlink()
            return f"wrote {target}"
        return ""

    def dev_write() -> str:
        return writes(Path(f"/dev/qwq-audit-{os.getpid()}"))

    def dev_shm() -> str:
        return writes(Path(f"/dev/shm/qwq-audit-{os.getpid()}"))

    def write_outside() -> str:
        target = tmp / f"outside-{time.monotonic_ns()}.txt"
        run_python(f"open({str(target)!r}, 'w').write('x')")
        return f"wrote {target}" if target.exists() else ""

    def symlink_cleanup() -> str:
        outside = tmp / f"keep-{time.monotonic_ns()}"
        outside.mkdir(mode=0o755)
        (outside / "keep.txt").write_text("keep")
        run_python("import os\nos.mkdir('d')\n"
                   f"os.symlink({str(outside)!r}, 'd/l')\nos.symlink({str(outside / 'keep.txt')!r}, 'd/f')\n"
                   "os.chmod('d', 0o500)\n")
        if oct(outside.stat().st_mode & 0o777) != "0o755" or not (outside / "keep.txt").exists():
            return "clean-up changed a directory outside through a symlink"
        return ""

    def private_file() -> str:
        secret = tmp / f"secret-{time.monotonic_ns()}.txt"
        secret.write_text("top secret")
        secret.chmod(0o600)
        result = run_python(f"print(open({str(secret)!r}).read())")
        return "read a mode-600 file outside" if "top secret" in result.stdout else ""

    def home_file() -> str:
        result = run_python("import os\nprint(os.listdir(os.path.expanduser('~')) if os.path.isdir("
                            "os.path.expanduser('~')) else [])\nprint(os.path.exists('/root/.cache'), "
                            "os.path.exists('/home'))")
        return "sees the home directory" if "True" in result.stdout else ""

    def host_processes() -> str:
        result = run_python("import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]))")
        return "sees host processes" if result.ok and int(result.stdout.strip() or 0) > 3 else ""

    def total_memory() -> str:
        result = run_python("import os, time\nfor _ in range(8):\n    if os.fork() == 0:\n"
                            "        block = b'x' * (450 << 20)\n        print('ok', flush=True)\n"
                            "        time.sleep(5)\n        os._exit(0)\nfor _ in range(8):\n    os.wait()\n",
                            timeout=30)
        return "8 children of 450 MB all ran" if result.stdout.count("ok") >= 8 else ""

    def total_disk() -> str:
        result = run_python("for i in range(50):\n    with open(f'f{i}', 'wb') as f:\n"
                            "        f.write(b'x' * ((16 << 20) - 1))\n    print(i, flush=True)\n", timeout=30)
        written = len(result.stdout.split()) * 16
        return f"wrote {written} MB" if written > sandbox.MAX_DISK_BYTES >> 20 else ""

    def fork_bomb() -> str:
        result = run_python("import os, time\nfor _ in range(10):\n    try:\n        if os.fork() == 0:\n"
                            "            print('f', flush=True)\n    except OSError:\n        pass\n"
                            "time.sleep(30)\n", timeout=3)
        return f"{result.stdout.count('f')} processes" if result.stdout.count("f") > sandbox.MAX_PROCESSES else ""

    def endless() -> str:
        start = time.monotonic()
        run_python("while True:\n    pass\n", timeout=2)
        return "" if time.monotonic() - start < 10 else "an endless loop outlived its timeout"

    def mbpp_end_to_end() -> str:
        from qwq_local.problems.checks import code_passes
        from qwq_local.problems.datasets import Problem

        secret = tmp / f"mbpp-secret-{time.monotonic_ns()}.txt"
        secret.write_text("s3cret")
        secret.chmod(0o600)
        problem = Problem(id="mbpp_x", kind="mbpp", prompt="Return the secret.", answer="",
                          tests=("assert get_secret() == 's3cret'",), setup="", format="code")
        reply = f"```python\ndef get_secret():\n    return open({str(secret)!r}).read()\n```"
        return "the MBPP check passed a solution that read a private file" if code_passes(problem, reply) else ""

    return [("host Unix socket", unix_socket), ("host TCP port", tcp), ("host Unix socket via libc", ctypes_socket),
            ("write into /dev", dev_write), ("write into /dev/shm", dev_shm), ("write outside the work dir",
                                                                              write_outside),
            ("symlink clean-up", symlink_cleanup), ("mode-600 file outside", private_file),
            ("home directory", home_file), ("host processes", host_processes),
            ("total memory over 8 children", total_memory), ("total disk", total_disk), ("fork bomb", fork_bomb),
            ("endless loop", endless), ("MBPP check reading a private file", mbpp_end_to_end)]


def run_sandbox(tmp: Path, weakest: bool = False) -> list[Outcome]:
    """The probes through bubblewrap and through the fallback (or, to see that they catch escapes, rlimits only)."""
    from qwq_local.problems import sandbox

    outcomes = []
    for isolation in ("rlimits",) if weakest else ("best", "fallback"):
        if isolation != "best":
            sandbox._bwrap = lambda: None  # as where bubblewrap is not installed
        if isolation == "rlimits":
            sandbox._isolation_prefix = lambda: ()  # as where no namespace can be made either
        name = sandbox.isolation_name().split(" (")[0]
        for probe, run in sandbox_probes(tmp):
            start = time.monotonic()
            try:
                escaped = run()
            except Exception as error:  # noqa: BLE001 - a probe that breaks is reported, not fatal
                outcomes.append(Outcome(f"sandbox [{name}]: {probe}", "traceback", None, repr(error)))
                continue
            verdict = "hang" if time.monotonic() - start > 60 else "clean"
            outcomes.append(Outcome(f"sandbox [{name}]: {probe}", verdict, None, escaped=escaped))
    return outcomes


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-model", action="store_true", help="skip the cases that load the tiny GGUF")
    parser.add_argument("--no-sandbox", action="store_true", help="skip the hostile programs")
    parser.add_argument("--json", action="store_true", help="one JSON object per case, then the totals")
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    parser.add_argument("--weakest", action="store_true",
                        help="run the hostile programs under rlimits only, to see the probes catch what gets out")
    options = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qwq-audit-"))
    try:
        (tmp / "user").mkdir()
        (tmp / "cwd").mkdir()
        base_env = {key: value for key, value in os.environ.items()
                    if not key.startswith(("QWQ_", "HF_")) or key == "QWQ_DATA_DIR"}
        base_env.update({"QWQ_USER_PATH": str(tmp / "user"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
                         "HF_HOME": str(tmp / "hf"), "AUDIT_CWD": str(tmp / "cwd"), "COLUMNS": "200"})
        outcomes: list[Outcome] = []
        for case in qwq_cases(tmp, with_model=not options.no_model):
            if options.k not in case.name:
                continue
            lock = case.env.get("AUDIT_LOCK")
            holder = _hold_lock(Path(lock)) if lock else None
            try:
                outcome = run_case(case, base_env)
            finally:
                if holder is not None:
                    holder.close()
            _report(outcome, options.json)
            outcomes.append(outcome)
        if not options.no_sandbox:
            for outcome in run_sandbox(tmp, options.weakest):
                if options.k in outcome.name:
                    _report(outcome, options.json)
                    outcomes.append(outcome)
    finally:
        for path in tmp.rglob("*"):
            try:
                path.chmod(0o700 if path.is_dir() else 0o600)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    totals = {
        "cases": len(outcomes),
        "clean one-line errors with their own code": sum(o.verdict == "clean" and o.code is not None for o in outcomes),
        "went on past the fault as documented (at most one warning)": sum(o.verdict == "went-on" for o in outcomes),
        "sandbox probes contained": sum(o.verdict == "clean" and o.code is None and not o.escaped for o in outcomes),
        "wrong exit code or not one line": sum(o.verdict == "wrong-code" for o in outcomes),
        "unexpected (exit 1)": sum(o.verdict == "unexpected" for o in outcomes),
        "tracebacks": sum(o.verdict == "traceback" for o in outcomes),
        "hangs": sum(o.verdict == "hang" for o in outcomes),
        "data lost": sum(bool(o.lost) for o in outcomes),
        "escapes": sum(bool(o.escaped) for o in outcomes),
    }
    if options.json:
        print(json.dumps({"totals": totals}))
    else:
        print("\n" + "\n".join(f"{value:4d}  {key}" for key, value in totals.items()))
    bad = sum(totals[k] for k in ("wrong exit code or not one line", "unexpected (exit 1)", "tracebacks", "hangs",
                                  "data lost", "escapes"))
    return 0 if bad == 0 else 1


def _hold_lock(path: Path) -> sqlite3.Connection:
    """An exclusive lock on a history database for the length of one case (longer than qwq's busy timeout)."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE IF NOT EXISTS t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def _report(outcome: Outcome, as_json: bool) -> None:
    if as_json:
        print(json.dumps(outcome.__dict__), flush=True)
        return
    flag = "ESCAPE " if outcome.escaped else "LOST " if outcome.lost else ""
    code = "" if outcome.code is None else f" exit {outcome.code}"
    detail = outcome.escaped or outcome.lost or outcome.detail
    print(f"{flag}{outcome.verdict:<10}{code:>8}  {outcome.name}  {shlex.quote(detail)[:140]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
