"""Runs model-written Python in a limited, network-less, throwaway subprocess (the only place it runs)."""

from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO

OUTPUT_LIMIT = 8192  # bytes kept of each of stdout and stderr
MAX_PROCESSES = 64  # processes one run may have at once (pids cgroup or RLIMIT_NPROC)
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_OPEN_FILES = 64
_PATH = "/usr/local/bin:/usr/bin:/bin"
_SCRIPT = "main.py"

# Runs main.py as __main__ so tracebacks name it; -I -S keep user site, env and cwd out of sys.path.
_RUNNER = f"""\
with open({_SCRIPT!r}, encoding="utf-8") as _f:
    _code = compile(_f.read(), {_SCRIPT!r}, "exec")
del _f
exec(_code, {{"__name__": "__main__", "__file__": {_SCRIPT!r}, "__builtins__": __builtins__}})
"""

# The fallback where no network namespace can be made: sockets refuse to be created.
_NO_NETWORK = """\
import socket as _socket_mod, _socket
class _NoNetwork(_socket_mod.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")
def _refuse(*args, **kwargs):
    raise PermissionError("network access is disabled in the sandbox")
_socket_mod.socket = _socket.socket = _NoNetwork
_socket_mod.create_connection = _socket_mod.socketpair = _socket_mod.fromfd = _refuse
_socket.socketpair = _socket.fromfd = _refuse
del _socket_mod, _socket, _NoNetwork, _refuse
"""

# `unshare --fork` turns a child's death by signal into "sigprocmask unblock failed" (util-linux 2.38),
# so a shell in between reports it as exit 128 + signal, which run_python turns back into -signal.
_SIGNAL_AS_EXIT = 'unset PWD OLDPWD; "$@"; exit $?'
# With a mount namespace the same shell first makes every mount read-only but the run's directory
# (a bind mount of itself, entered anew); mounts it cannot remount stay as they were.
_READ_ONLY = """\
mount --bind "$PWD" "$PWD" && cd "$PWD" || exit 125
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
  case "$m" in /proc|/proc/*|/dev|/dev/pts) continue;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null
done
mount -o remount,bind,rw "$PWD" || exit 125
"""
_NAMESPACES = ("unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child")
_ISOLATION_CANDIDATES: tuple[tuple[str, ...], ...] = (
    (*_NAMESPACES, "--mount", "/bin/sh", "-c", _READ_ONLY + _SIGNAL_AS_EXIT, "sh"),
    (*_NAMESPACES, "/bin/sh", "-c", _SIGNAL_AS_EXIT, "sh"),
    ("unshare", "--net", "--pid", "--fork", "--kill-child", "/bin/sh", "-c", _SIGNAL_AS_EXIT, "sh"),
    ("unshare", "--user", "--map-root-user", "--net"),
    ("unshare", "--net"),
)
_PROBE = "import socket; print(' '.join(name for _, name in socket.if_nameindex()))"


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended; `ok` is a clean exit within the limits."""

    ok: bool
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool


@cache
def _isolation_prefix() -> tuple[str, ...]:
    """The first `unshare` command line that really gives a loopback-only network here, else ().

    Tried once per process, in order of how much each isolates; each is run as run_python would.
    """
    if shutil.which("unshare") is None:
        return ()
    with tempfile.TemporaryDirectory(prefix="qwq-sandbox-probe-") as workdir:
        for prefix in _ISOLATION_CANDIDATES:
            try:
                probe = subprocess.run(
                    [*prefix, sys.executable, "-I", "-S", "-c", _PROBE],
                    check=False, capture_output=True, text=True, timeout=10, env={"PATH": _PATH},
                    stdin=subprocess.DEVNULL, cwd=workdir,
                )
            except (OSError, subprocess.SubprocessError):
                continue
            if probe.returncode == 0 and probe.stdout.split() == ["lo"]:
                return prefix
    return ()


def _cgroup_paths() -> list[tuple[str, str, str]]:
    """(mount point, mount root, version) of each mounted cgroup hierarchy with the pids controller."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, extra = head.split(), tail.split()
        if len(fields) < 5 or len(extra) < 3:
            continue
        if extra[0] == "cgroup" and "pids" in extra[2].split(","):
            found.append((fields[4], fields[3], "1"))
        elif extra[0] == "cgroup2":
            found.append((fields[4], fields[3], "2"))
    return found


@cache
def _pids_cgroup_parent() -> Path | None:
    """A writable cgroup directory (ours) under which a per-run pids-limited cgroup can be made."""
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for mount, root, version in _cgroup_paths():
        for line in own:
            _, controllers, path = line.split(":", 2)
            wanted = "pids" in controllers.split(",") if version == "1" else controllers == ""
            if not wanted or not (path + "/").startswith(root.rstrip("/") + "/"):
                continue
            parent = Path(mount) / path[len(root.rstrip("/")) :].lstrip("/")
            if version == "2":
                try:
                    if "pids" not in (parent / "cgroup.subtree_control").read_text().split():
                        continue
                except OSError:
                    continue
            if os.access(parent, os.W_OK):
                return parent
    return None


def _make_pids_cgroup(name: str) -> Path | None:
    """A fresh cgroup allowing MAX_PROCESSES tasks, or None where cgroups can't be written."""
    parent = _pids_cgroup_parent()
    if parent is None:
        return None
    group = parent / name
    try:
        group.mkdir()
        (group / "pids.max").write_text(str(MAX_PROCESSES))
    except OSError:
        _remove_cgroup(group)
        return None
    return group


def _remove_cgroup(group: Path) -> None:
    """Kill what is left in `group`, then remove it (retrying while the kernel reaps)."""
    for _ in range(50):
        try:
            pids = (group / "cgroup.procs").read_text().split()
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            threading.Event().wait(0.02)


def _user_process_count() -> int:
    """Processes of our real uid now (what RLIMIT_NPROC counts)."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


def _lower(limit: int, soft: int, hard: int | None = None) -> None:
    """Set a resource limit, never above the hard limit already in force."""
    hard = soft if hard is None else hard
    _, current = resource.getrlimit(limit)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(limit, (soft, hard))


def _limits(memory_mb: int, cpu_seconds: int, nproc: int | None, cgroup: Path | None) -> Callable[[], None]:
    """The preexec_fn: join the pids cgroup, then lower the resource limits of the child."""
    procs = str(cgroup / "cgroup.procs") if cgroup else None

    def apply() -> None:
        if procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        _lower(resource.RLIMIT_AS, memory_mb * 1024 * 1024)
        _lower(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)  # SIGXCPU, then SIGKILL
        _lower(resource.RLIMIT_NOFILE, MAX_OPEN_FILES)
        _lower(resource.RLIMIT_FSIZE, MAX_FILE_BYTES)
        _lower(resource.RLIMIT_CORE, 0)
        if nproc is not None:
            _lower(resource.RLIMIT_NPROC, nproc)

    return apply


def _drain(stream: IO[bytes], kept: bytearray) -> None:
    """Read `stream` to its end, keeping the first OUTPUT_LIMIT + 1 bytes."""
    while chunk := stream.read(65536):
        if len(kept) <= OUTPUT_LIMIT:
            kept += chunk[: OUTPUT_LIMIT + 1 - len(kept)]


def _text(data: bytearray) -> str:
    text = bytes(data[:OUTPUT_LIMIT]).decode("utf-8", "replace")
    return text + "\n... [output truncated]" if len(data) > OUTPUT_LIMIT else text


def _remove_tree(path: str) -> None:
    """Remove the run's directory even where the code made parts of it read-only."""

    def unlock(func: Callable[..., object], target: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            os.chmod(target, stat.S_IRWXU)
            func(target)
        except OSError:
            pass

    shutil.rmtree(path, onerror=unlock)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _communicate(proc: subprocess.Popen[bytes], timeout: float, cgroup: Path | None) -> tuple[str, str, bool]:
    """(stdout, stderr, timed out) of `proc`, which is killed with all it started when done or late."""
    assert proc.stdout is not None and proc.stderr is not None
    streams = (proc.stdout, proc.stderr)
    kept = (bytearray(), bytearray())
    readers = [threading.Thread(target=_drain, args=pair, daemon=True) for pair in zip(streams, kept)]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:  # also on Ctrl-C
        _kill_group(proc.pid)  # with whatever the code left running in the background
        if cgroup:
            _remove_cgroup(cgroup)  # and what left the process group
        proc.wait()
    for reader, stream in zip(readers, streams):
        reader.join(timeout=2)
        if not reader.is_alive():
            stream.close()
    return _text(kept[0]), _text(kept[1]), timed_out


def run_python(
    code: str, *, timeout: float = 10, memory_mb: int = 512, cpu_seconds: int | None = None
) -> SandboxResult:
    """Run `code` as a script (`python -I -S`, __main__) in a fresh temp cwd that is removed afterwards.

    Where the kernel allows: new user, network (loopback only), pid and mount namespaces, every
    mount read-only but the temp dir, and a pids cgroup; else a socket guard. Always: rlimits on
    memory, CPU, open files and file size, env PATH only, stdin /dev/null, the process group killed
    after `timeout` seconds (or at the end), output cut to OUTPUT_LIMIT bytes.
    """
    prefix = _isolation_prefix()
    forks = "--fork" in prefix
    runner = _RUNNER if prefix else _NO_NETWORK + _RUNNER
    cpu = cpu_seconds if cpu_seconds is not None else math.ceil(timeout) + 1
    nproc = _user_process_count() + MAX_PROCESSES if os.getuid() != 0 else None  # root ignores NPROC
    workdir = tempfile.mkdtemp(prefix="qwq-sandbox-")
    cgroup = _make_pids_cgroup(os.path.basename(workdir))
    try:
        Path(workdir, _SCRIPT).write_text(code, encoding="utf-8")
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-I", "-S", "-c", runner],
            cwd=workdir, env={"PATH": _PATH}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
            start_new_session=True,
            # Only setrlimit and one small write run between fork and exec: no locks to inherit.
            preexec_fn=_limits(memory_mb, cpu, nproc, cgroup),  # noqa: PLW1509
        )
        stdout, stderr, timed_out = _communicate(proc, timeout, cgroup)
    finally:
        if cgroup:
            _remove_cgroup(cgroup)
        _remove_tree(workdir)
    returncode = proc.returncode
    if forks and returncode > 128:
        returncode = 128 - returncode
    timed_out = timed_out or returncode == -signal.SIGXCPU
    return SandboxResult(
        ok=returncode == 0 and not timed_out, returncode=returncode,
        stdout=stdout, stderr=stderr, timed_out=timed_out,
    )
