"""The sandbox for model-written code: limits, no network, no traces left behind."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from qwq_local.problems import sandbox
from qwq_local.problems.sandbox import run_python


def test_clean_code_runs() -> None:
    result = run_python("print(sum(range(10)))")
    assert result.ok and result.returncode == 0 and not result.timed_out
    assert result.stdout == "45\n"


def test_failing_assert_is_not_ok() -> None:
    result = run_python("def f(x):\n    return x + 1\nassert f(1) == 3\n")
    assert not result.ok and result.returncode == 1
    assert "AssertionError" in result.stderr and 'File "main.py", line 3' in result.stderr


def test_environment_is_empty_and_stdin_gives_eof() -> None:
    result = run_python("import os, sys\nprint(sorted(set(os.environ) - {'LC_CTYPE'}))\nprint(sys.flags.isolated)\ninput()")
    assert result.stdout.splitlines() == ["['PATH']", "1"]
    assert "EOFError" in result.stderr


def test_infinite_loop_is_killed_on_time() -> None:
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout=1)
    assert result.timed_out and not result.ok
    assert time.monotonic() - start < 5


def test_cpu_limit_ends_a_busy_loop() -> None:
    result = run_python("while True:\n    pass\n", timeout=10, cpu_seconds=1)
    assert result.timed_out and not result.ok


def test_memory_bomb_is_stopped() -> None:
    result = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 * 1024))\n", memory_mb=256)
    assert not result.ok and not result.timed_out
    assert "MemoryError" in result.stderr


def test_output_is_truncated() -> None:
    result = run_python("print('x' * 1_000_000)")
    assert result.ok
    assert len(result.stdout) < sandbox.OUTPUT_LIMIT + 100 and result.stdout.endswith("[output truncated]")


def _connect_code(port: int) -> str:
    return (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "    print('connected')\n"
        "except OSError as error:\n"
        "    print('blocked', type(error).__name__)\n"
    )


@pytest.mark.parametrize("isolation", ["namespace", "guard"])
def test_network_is_blocked(isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if isolation == "guard":
        monkeypatch.setattr(sandbox, "_isolation_prefix", lambda: ())
    elif not sandbox._isolation_prefix():
        pytest.skip("no network namespace can be made here")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.2)
        result = run_python(_connect_code(server.getsockname()[1]))
        assert result.stdout.startswith("blocked"), result
        with pytest.raises(socket.timeout):
            server.accept()


def test_writes_stay_in_a_temp_dir_that_is_removed(tmp_path: Path) -> None:
    code = (
        "import os\n"
        "open('out.txt', 'w').write('hello')\n"
        "os.makedirs('sub/deeper')\n"
        "os.chmod('sub', 0o500)\n"
        "print(os.getcwd())\n"
    )
    before = set(Path.cwd().iterdir())
    result = run_python(code)
    assert result.ok, result.stderr
    workdir = Path(result.stdout.strip())
    assert workdir != Path.cwd() and workdir.name.startswith("qwq-sandbox-")
    assert not workdir.exists()
    assert set(Path.cwd().iterdir()) == before


def test_the_rest_of_the_filesystem_is_read_only(tmp_path: Path) -> None:
    if "--mount" not in sandbox._isolation_prefix():
        pytest.skip("no mount namespace can be made here")
    outside = tmp_path / "outside.txt"
    result = run_python(f"open({str(outside)!r}, 'w').write('x')")
    assert not result.ok and "Read-only file system" in result.stderr
    assert not outside.exists()


def test_fork_bomb_is_contained() -> None:
    if os.getuid() == 0 and sandbox._pids_cgroup_parent() is None:
        pytest.skip("root without a writable pids cgroup: no process limit can be enforced")
    bomb = (
        "import os, time\n"
        "blocked = 0\n"
        "for _ in range(10):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            print('pid', os.readlink('/proc/self'), flush=True)  # as the host sees it\n"
        "    except OSError:\n"
        "        blocked += 1\n"
        "if blocked:\n"
        "    print('blocked', flush=True)\n"
        "time.sleep(60)\n"
    )
    result = run_python(bomb, timeout=2)
    assert result.timed_out and not result.ok
    assert "blocked" in result.stdout
    forked = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("pid ")]
    assert 0 < len(forked) <= sandbox.MAX_PROCESSES
    time.sleep(0.1)
    assert [pid for pid in forked if Path(f"/proc/{pid}").exists()] == []
