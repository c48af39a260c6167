"""The sandbox for model-written code: limits, no network, no traces left behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
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
    if not sandbox._bwrap() and "--mount" not in sandbox._isolation_prefix():
        pytest.skip("no mount namespace can be made here")
    outside = tmp_path / "outside.txt"
    result = run_python(f"open({str(outside)!r}, 'w').write('x')")
    assert not result.ok and ("Read-only file system" in result.stderr or "No such file" in result.stderr)
    assert not outside.exists()


@pytest.mark.parametrize("isolation", ["best", "fallback", "rlimits"])
def test_a_run_imports_only_the_libraries_it_names_and_cannot_change_them(
        isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if isolation == "rlimits":  # no namespaces at all: the host's files are seen, the links are what is added
        monkeypatch.setattr(sandbox, "_bwrap", lambda: None)
        monkeypatch.setattr(sandbox, "_isolation_prefix", lambda: ())
    else:
        _isolated(isolation, monkeypatch)
        if isolation == "fallback" and not any("chroot" in part for part in sandbox._isolation_prefix()):
            pytest.skip("the fallback could not make its empty root here")
    code = (
        "import sympy, mpmath\n"
        "print(sympy.latex(sympy.sqrt(8)), sympy.__file__)\n"
        "try:\n    import numpy\nexcept ImportError:\n    print('no numpy')\n"
    )
    if isolation != "rlimits":  # rlimits alone cannot stop writing what the user can (doctor says so): not tried
        code += "try:\n    open(sympy.__file__, 'a').close()\nexcept OSError:\n    print('read-only')\n"  # writes nothing
    result = run_python(code, timeout=30, memory_mb=256, libraries=("sympy", "mpmath", "not_installed_here"))
    assert result.ok, result
    first, *rest = result.stdout.splitlines()
    assert first.startswith("2 \\sqrt{2} ") and rest[0] == "no numpy"  # numpy is installed, but not named
    if isolation != "rlimits":
        assert rest[1:] == ["read-only"]
        assert first.split()[-1] == "/qwq-lib/sympy/__init__.py"  # not where it lives on the host
    assert not run_python("import sympy").ok  # not named: not there
    with pytest.raises(ValueError):
        run_python("print(1)", libraries=("../etc",))


def _host_processes_named(name: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                found.append(entry.name)
        except OSError:
            pass
    return found


def test_fork_bomb_is_contained() -> None:
    if os.getuid() == 0 and sandbox._pids_cgroup_parent() is None:
        pytest.skip("root without a writable pids cgroup: no process limit can be enforced")
    name = f"qwqbomb{os.getpid()}"
    bomb = (
        "import ctypes, os, time\n"
        f"ctypes.CDLL(None).prctl(15, {name.encode()!r})  # PR_SET_NAME: the host finds them by it\n"
        "blocked = 0\n"
        "for _ in range(10):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            print('forked', flush=True)\n"
        "    except OSError:\n"
        "        blocked += 1\n"
        "if blocked:\n"
        "    print('blocked', flush=True)\n"
        "time.sleep(60)\n"
    )
    result = run_python(bomb, timeout=3)
    assert not result.ok
    assert "blocked" in result.stdout or "total processes" in result.stderr, result
    assert 0 < result.stdout.count("forked") <= sandbox.MAX_PROCESSES
    time.sleep(0.2)
    assert _host_processes_named(name) == []


# Hostile programs (issue 25): each ran or escaped through the sandbox before bubblewrap and total limits.

def _needs_bwrap() -> None:
    if not sandbox._bwrap():
        pytest.skip("bubblewrap is not installed or cannot make namespaces here")


def _isolated(isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """bubblewrap ("best"), or the fallback made with unshare and chroot as where bwrap is not installed."""
    if isolation == "best":
        _needs_bwrap()
        return
    monkeypatch.setattr(sandbox, "_bwrap", lambda: None)
    if not _can_make_an_empty_root():
        pytest.skip("no user and mount namespaces (or no chroot) here: the fallback cannot make an empty root")


def _can_make_an_empty_root() -> bool:
    """What the fallback needs of the machine (not of qwq): unshare into user and mount namespaces, and chroot."""
    if shutil.which("unshare") is None or shutil.which("chroot", path="/usr/bin:/bin:/usr/sbin:/sbin") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "true"],
                           check=False, capture_output=True)
    return probe.returncode == 0


ISOLATIONS = pytest.mark.parametrize("isolation", ["best", "fallback"])


@pytest.mark.parametrize("isolation", ["best", "fallback"])
def test_a_host_unix_socket_is_unreachable(isolation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if isolation == "fallback":
        monkeypatch.setattr(sandbox, "_bwrap", lambda: None)
    path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(1)
        server.settimeout(0.3)
        code = (
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({str(path)!r})\n"
            "s.sendall(b'secret')\n"
            "print('sent')\n"
        )
        result = run_python(code)
        assert not result.ok and "sent" not in result.stdout
        with pytest.raises(socket.timeout):
            server.accept()


@ISOLATIONS
def test_dev_cannot_be_written(isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _isolated(isolation, monkeypatch)
    target = Path(f"/dev/qwq-probe-{os.getpid()}")
    result = run_python(f"open({str(target)!r}, 'w').write('x')\nprint('written')")
    assert not result.ok and "written" not in result.stdout
    assert not target.exists()
    devices = run_python("import os\nprint(sorted(os.listdir('/dev')))\nopen('/dev/null', 'w').write('x')")
    assert devices.ok and "'urandom'" in devices.stdout and "'vda'" not in devices.stdout


@ISOLATIONS
def test_a_private_file_and_host_processes_are_invisible(
        isolation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _isolated(isolation, monkeypatch)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0o600)
    result = run_python(
        "import os\n"
        f"try:\n    print(open({str(secret)!r}).read())\nexcept OSError as error:\n    print(type(error).__name__)\n"
        "print('home', os.path.exists(os.path.expanduser('~/.cache')))\n"
        "print('procs', len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
    )
    assert result.ok, result
    lines = result.stdout.splitlines()
    assert lines[0] == "FileNotFoundError" and "top secret" not in result.stdout
    assert lines[1] == "home False"
    assert int(lines[2].split()[1]) <= 3  # the namespace's init (bubblewrap's or sh), the shell, the program


def test_clean_up_follows_no_symlink_out_of_the_sandbox(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    (outside / "keep.txt").write_text("keep")
    code = (
        "import os\n"
        "os.mkdir('d')\n"
        f"os.symlink({str(outside)!r}, 'd/l')\n"
        f"os.symlink({str(outside / 'keep.txt')!r}, 'd/f')\n"
        "os.chmod('d', 0o500)\n"
    )
    for isolation in ("best", "fallback"):
        with pytest.MonkeyPatch.context() as patch:
            if isolation == "fallback":
                patch.setattr(sandbox, "_bwrap", lambda: None)
            assert run_python(code).ok
        assert oct(outside.stat().st_mode & 0o777) == "0o755"
        assert (outside / "keep.txt").read_text() == "keep"


def test_remove_tree_without_dac_override_leaves_link_targets_alone(tmp_path: Path) -> None:
    """The CVE-2023-6597 case: clean-up that cannot delete at first must not chmod through a symlink."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE")
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    tree = tmp_path / "run"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "l").symlink_to(outside)  # the only entry: its unlink is the one that fails
    (tree / "d").chmod(0o500)
    remove = f"from qwq_local.problems.sandbox import _remove_tree; _remove_tree({str(tree)!r})"
    subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", remove],
        check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert oct(outside.stat().st_mode & 0o777) == "0o755"
    assert not tree.exists()


@ISOLATIONS
def test_memory_is_a_total_over_all_children(isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _isolated(isolation, monkeypatch)
    code = (
        "import os, time\n"
        "for _ in range(8):\n"
        "    if os.fork() == 0:\n"
        "        block = b'x' * (450 << 20)\n"
        "        print('ok', flush=True)\n"
        "        time.sleep(5)\n"
        "        os._exit(0)\n"
        "for _ in range(8):\n"
        "    os.wait()\n"
    )
    result = run_python(code, timeout=30)
    assert not result.ok and result.stdout.count("ok") < 8
    assert "total memory" in result.stderr


@ISOLATIONS
def test_disk_is_a_total_over_all_files(isolation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _isolated(isolation, monkeypatch)
    code = (
        "for i in range(50):\n"
        "    with open(f'f{i}', 'wb') as f:\n"
        "        f.write(b'x' * ((16 << 20) - 1))\n"
        "    print(i, flush=True)\n"
    )
    result = run_python(code, timeout=30)
    assert not result.ok and "No space left on device" in result.stderr
    assert len(result.stdout.split()) * 16 <= sandbox.MAX_DISK_BYTES >> 20


@ISOLATIONS
def test_the_mbpp_check_fails_a_solution_that_reads_a_private_file(
        isolation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: the audit's solution read a mode-600 file and was still reported correct."""
    _isolated(isolation, monkeypatch)
    from qwq_local.problems.checks import code_passes
    from qwq_local.problems.datasets import Problem

    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    problem = Problem(id="mbpp_x", kind="mbpp", prompt="Return the secret.", answer="",
                      tests=("assert get_secret() == 's3cret'",), setup="", format="code")
    reply = f"```python\ndef get_secret():\n    return open({str(secret)!r}).read()\n```"
    assert not code_passes(problem, reply)
    honest = "```python\ndef get_secret():\n    return 's3cret'\n```"
    assert code_passes(problem, honest)


@pytest.mark.parametrize("available", [True, False])
def test_doctor_names_the_sandbox_and_what_the_fallback_cannot_stop(
        available: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if available:
        _needs_bwrap()
        assert sandbox.isolation_name().startswith("bubblewrap")
        return
    monkeypatch.setattr(sandbox, "_bwrap", lambda: None)
    for prefix, says in [
        (sandbox._isolation_candidates()[0], "empty root"),
        (("unshare", "--user", "--map-root-user", "--net"), "cannot stop: reading files the user can read"),
        ((), "cannot stop: reading and writing what the user can"),
    ]:
        monkeypatch.setattr(sandbox, "_isolation_prefix", lambda prefix=prefix: prefix)
        assert says in sandbox.isolation_name()
