"""Runs model-written Python in a limited, network-less, throwaway subprocess (the only place it runs)."""

from __future__ import annotations

import importlib.util
import math
import os
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import IO

OUTPUT_LIMIT = 8192  # bytes kept of each of stdout and stderr
MAX_PROCESSES = 64  # processes one run may have at once (pids cgroup or RLIMIT_NPROC)
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_OPEN_FILES = 64
MAX_DISK_BYTES = 64 * 1024 * 1024  # the size of the bubblewrap run's tmpfs work dir
_WATCH_SECONDS = 0.05  # how often the total memory and process count of a run are measured
_PATH = "/usr/local/bin:/usr/bin:/bin"
_SCRIPT = "main.py"
_INSIDE = "/tmp/qwq-sandbox-work"  # the work dir inside bubblewrap, a size-capped tmpfs
_LIBRARY_ROOT = "/qwq-lib"  # where the installed packages a run may import are bound read-only (empty roots)
_LIBRARY_LINKS = "qwq-lib"  # in the host work dir: a link to each, for the fallbacks (the chroot script binds them)
_HOST_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr")
_HOST_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf")

# Runs main.py as __main__ so tracebacks name it; -I -S keep user site, env and cwd out of sys.path.
_RUNNER = f"""\
with open({_SCRIPT!r}, encoding="utf-8") as _f:
    _code = compile(_f.read(), {_SCRIPT!r}, "exec")
del _f
exec(_code, {{"__name__": "__main__", "__file__": {_SCRIPT!r}, "__builtins__": __builtins__}})
"""

# Put the packages a run may import (run_python's `libraries`) first on sys.path: bound read-only at _LIBRARY_ROOT
# in an empty root, linked from the work dir where the host's files are seen anyway.
_LIBRARY_PATH = f"""\
import os as _os, sys as _sys
_sys.dont_write_bytecode = True  # never into a package (read-only, or the user's own files in the weak fallbacks)
for _p in ({_LIBRARY_ROOT!r}, _os.path.abspath({_LIBRARY_LINKS!r})):
    if _os.path.isdir(_p):
        _sys.path.insert(0, _p)
del _os, _sys
"""

# bubblewrap sets PWD after --chdir; the environment stays PATH only.
_NO_PWD = "import os as _os\n_os.environ.pop('PWD', None)\ndel _os\n"

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


def _empty_root_script(chroot: str) -> str:
    """bubblewrap's empty root made by hand with mount and chroot, for where bwrap is not installed.

    In the run's directory on the host: a tmpfs root holding only the system directories and Python read-only,
    null/zero/full/random/urandom in /dev, a fresh /proc and a size-capped tmpfs work dir; then chroot into it.
    """
    _, prefix = _python()
    binds = " ".join(shlex.quote(path) for path in (*_HOST_DIRS, prefix))
    files = " ".join(shlex.quote(path) for path in _HOST_FILES)
    return f"""\
set -e
W=$PWD
mkdir root
mount -t tmpfs -o size=1m,mode=755 qwq-root root
cd root
for d in {binds}; do
  if [ -L "$d" ]; then mkdir -p ".${{d%/*}}"; ln -s "$(readlink "$d")" ".$d"
  elif [ -d "$d" ]; then mkdir -p ".$d"; mount --rbind "$d" ".$d"; mount -o remount,bind,ro ".$d"; fi
done
mkdir -p etc dev proc {_INSIDE[1:]}
for f in {files}; do
  if [ -f "$f" ]; then touch ".$f"; mount --bind "$f" ".$f"; mount -o remount,bind,ro ".$f"; fi
done
for n in null zero full random urandom; do touch "dev/$n"; mount --bind "/dev/$n" "dev/$n"; done
ln -s /proc/self/fd dev/fd
mount -t proc proc proc
mount -t tmpfs -o size={MAX_DISK_BYTES},mode=755 qwq-work {_INSIDE[1:]}
if [ -d "$W/{_LIBRARY_LINKS}" ]; then
  mkdir {_LIBRARY_ROOT[1:]}
  for l in "$W/{_LIBRARY_LINKS}"/*; do
    [ -L "$l" ] || continue
    n=${{l##*/}}; mkdir "{_LIBRARY_ROOT[1:]}/$n"
    mount --rbind "$(readlink -f "$l")" "{_LIBRARY_ROOT[1:]}/$n"; mount -o remount,bind,ro "{_LIBRARY_ROOT[1:]}/$n"
  done
fi
if [ -f "$W/{_SCRIPT}" ]; then cp "$W/{_SCRIPT}" {_INSIDE[1:]}/; fi
mount -o remount,bind,ro .
cd /
exec {shlex.quote(chroot)} "$W/root" /bin/sh -c 'cd {_INSIDE} || exit 125; {_SIGNAL_AS_EXIT}' sh "$@"
"""


def _isolation_candidates() -> tuple[tuple[str, ...], ...]:
    """unshare command lines, most isolating first; the first that works here is the fallback sandbox."""
    chroot = shutil.which("chroot", path=f"{_PATH}:/usr/sbin:/sbin")
    empty_root = ((*_NAMESPACES, "--mount", "--ipc", "/bin/sh", "-c", _empty_root_script(chroot), "sh"),) if chroot else ()
    return (
        *empty_root,
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


def _python() -> tuple[str, str]:
    """(the real interpreter binary, its installation prefix) — what bubblewrap binds read-only."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


def _bwrap_command(bwrap: str, code_fd: int, libraries: Mapping[str, str] | None = None) -> list[str]:
    """bubblewrap from an empty root: Python and system libraries read-only, private /dev and /proc, no network;
    each of `libraries` (name: package directory) read-only under _LIBRARY_ROOT."""
    command = [
        bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--tmpfs", "/",
        "--proc", "/proc", "--dev", "/dev",
    ]
    for path in _HOST_DIRS:
        if os.path.islink(path):
            command += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            command += ["--ro-bind", path, path]
    for path in _HOST_FILES:
        command += ["--ro-bind-try", path, path]
    executable, prefix = _python()
    command += ["--ro-bind", prefix, prefix]
    if not executable.startswith(prefix.rstrip("/") + "/"):
        command += ["--ro-bind", executable, executable]
    for name, directory in (libraries or {}).items():
        command += ["--ro-bind", directory, f"{_LIBRARY_ROOT}/{name}"]
    command += [
        "--size", str(MAX_DISK_BYTES), "--tmpfs", _INSIDE, "--file", str(code_fd), f"{_INSIDE}/{_SCRIPT}",
        "--chdir", _INSIDE, "--remount-ro", "/dev", "--remount-ro", "/",
        executable,
    ]
    return command


def _code_fd(code: str) -> int:
    """An unlinked in-memory file holding `code`, read by bubblewrap into the run's tmpfs."""
    fd = os.memfd_create("qwq-sandbox-code")
    os.write(fd, code.encode("utf-8"))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@cache
def _bwrap() -> str | None:
    """The bubblewrap binary if it can make its namespaces here (checked once per process), else None."""
    bwrap = shutil.which("bwrap")
    if bwrap is None or not hasattr(os, "memfd_create"):
        return None
    fd = _code_fd(_PROBE)
    try:
        probe = subprocess.run(
            [*_bwrap_command(bwrap, fd), "-I", "-S", _SCRIPT],
            check=False, capture_output=True, text=True, timeout=10, env={"PATH": _PATH},
            stdin=subprocess.DEVNULL, pass_fds=(fd,),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        os.close(fd)
    return bwrap if probe.returncode == 0 and probe.stdout.split() == ["lo"] else None


def isolation_name() -> str:
    """Which sandbox model-written code runs in here, and what it cannot stop, for `qwq doctor`."""
    if _bwrap():
        return "bubblewrap (empty root, no network, private /dev and /proc, total limits)"
    prefix = _isolation_prefix()
    if any("chroot" in part for part in prefix):
        return ("unshare + chroot (empty root, no network or IPC, private /dev and /proc, total limits: bubblewrap "
                "made by hand; install bubblewrap for the maintained tool)")
    mounts = "--mount" in prefix
    cannot = ["reading files the user can read", "writing /dev" if mounts else "writing /dev and any path the user can",
              "filling the disk (16 MB a file)"]
    if not mounts:
        cannot.append("reaching host Unix sockets except through Python's socket module")
    if prefix:
        return (f"unshare (no network, {'read-only mounts, ' if mounts else ''}rlimits; cannot stop: "
                f"{', '.join(cannot)}; install bubblewrap)")
    return ("rlimits and a Python socket guard only (cannot stop: reading and writing what the user can, filling "
            "the disk (16 MB a file), host sockets through ctypes, seeing host processes; install bubblewrap)")


@cache
def _isolation_prefix() -> tuple[str, ...]:
    """The first `unshare` command line that really gives a loopback-only network here, else ().

    Tried once per process, in order of how much each isolates; each is run as run_python would.
    """
    if shutil.which("unshare") is None:
        return ()
    with tempfile.TemporaryDirectory(prefix="qwq-sandbox-probe-") as workdir:
        for prefix in _isolation_candidates():
            try:
                probe = subprocess.run(
                    [*prefix, _python()[0], "-I", "-S", "-c", _PROBE],
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


def _remove_entries(dir_fd: int) -> None:
    """Empty the directory open as `dir_fd`, never following a symlink (chmod only through O_NOFOLLOW fds)."""
    os.fchmod(dir_fd, stat.S_IRWXU)
    with os.scandir(dir_fd) as entries:
        names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for name, is_dir in names:
        if is_dir:
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                _remove_entries(child)
            finally:
                os.close(child)
            os.rmdir(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)


def _remove_tree(path: str) -> None:
    """Remove the run's directory even where the code made parts of it read-only or linked outside it.

    The code owned this tree, so nothing in it is trusted: no path is resolved twice and no symlink is followed
    (CPython's rmtree onerror chmod followed them: CVE-2023-6597).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        _remove_entries(fd)
    except (OSError, RecursionError):
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except OSError:
        pass


def _run_tree(root: int, cgroup: Path | None) -> list[int]:
    """The processes of a run: its cgroup's, else `root` and its descendants found through /proc."""
    if cgroup:
        try:
            return [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            pass
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat_line = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat_line.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _anon_bytes(pid: int) -> int:
    """Private memory of a process (RssAnon), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _watch(root: int, cgroup: Path | None, memory_bytes: int, done: threading.Event, over: list[str]) -> None:
    """Kill the whole run when its processes together pass `memory_bytes` or MAX_PROCESSES (total limits)."""
    while not done.wait(_WATCH_SECONDS):
        tree = _run_tree(root, cgroup)
        used = sum(_anon_bytes(pid) for pid in tree)
        if used > memory_bytes or len(tree) > MAX_PROCESSES + 2:  # + bubblewrap's own two
            over.append(f"memory ({used >> 20} MB)" if used > memory_bytes else f"processes ({len(tree)})")
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            _kill_group(root)
            return


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _communicate(
    proc: subprocess.Popen[bytes], timeout: float, cgroup: Path | None, memory_bytes: int
) -> tuple[str, str, bool, list[str]]:
    """(stdout, stderr, timed out, limits passed) of `proc`, killed with all it started when done or late."""
    assert proc.stdout is not None and proc.stderr is not None
    streams = (proc.stdout, proc.stderr)
    kept = (bytearray(), bytearray())
    readers = [threading.Thread(target=_drain, args=pair, daemon=True) for pair in zip(streams, kept)]
    done, over = threading.Event(), []
    watcher = threading.Thread(target=_watch, args=(proc.pid, cgroup, memory_bytes, done, over), daemon=True)
    for thread in (*readers, watcher):
        thread.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = not over
    finally:  # also on Ctrl-C
        done.set()
        _kill_group(proc.pid)  # with whatever the code left running in the background
        if cgroup:
            _remove_cgroup(cgroup)  # and what left the process group
        proc.wait()
        watcher.join()
    for reader, stream in zip(readers, streams):
        reader.join(timeout=2)
        if not reader.is_alive():
            stream.close()
    return _text(kept[0]), _text(kept[1]), timed_out, over


@cache  # looked up once per process, not at every run
def library_dirs(names: tuple[str, ...]) -> Mapping[str, str]:
    """The directory of each installed package of `names` (found, not imported); one not installed is left out, so
    a program importing it fails as it would without it. Only packages (directories) are bound, never a module file
    that could be a link to anything."""
    found = {}
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"not a package name: {name!r}")
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        locations = list(spec.submodule_search_locations or []) if spec else []
        if locations and os.path.isdir(locations[0]):
            found[name] = os.path.realpath(locations[0])
    return MappingProxyType(found)  # cached and shared by every run: read-only


def run_python(
    code: str, *, timeout: float = 10, memory_mb: int = 512, cpu_seconds: int | None = None,
    libraries: tuple[str, ...] = (),
) -> SandboxResult:
    """Run `code` as a script (`python -I -S`, __main__) in a fresh, throwaway work dir.

    With bubblewrap: an empty root with only Python and system libraries read-only, a private /dev and /proc, no
    network, IPC or host sockets, the work dir a tmpfs of MAX_DISK_BYTES that vanishes with the run. Without it
    (or where it cannot make namespaces): `unshare` namespaces where the kernel allows, a socket guard, and a
    temp dir removed without following symlinks. Always: rlimits on memory, CPU, open files and file size, a
    pids cgroup where one can be made, `memory_mb` and MAX_PROCESSES as totals over all the run's processes,
    env PATH only, stdin /dev/null, everything killed after `timeout` seconds (or at the end), output cut to
    OUTPUT_LIMIT bytes. `libraries`: installed pure-Python packages the code may import (sympy and mpmath for
    math programs), bound read-only in an empty root, where nothing else of the installation is seen (the weaker
    fallbacks link to them, and see the host anyway).
    """
    bwrap = _bwrap()
    shared = library_dirs(libraries)
    runner = (_LIBRARY_PATH if shared else "") + _RUNNER
    cpu = cpu_seconds if cpu_seconds is not None else math.ceil(timeout) + 1
    nproc = _user_process_count() + MAX_PROCESSES if os.getuid() != 0 else None  # root ignores NPROC
    workdir = tempfile.mkdtemp(prefix="qwq-sandbox-")  # on the host: names the cgroup; the fallback's cwd
    cgroup = _make_pids_cgroup(os.path.basename(workdir))
    code_fd = _code_fd(code) if bwrap else None
    try:
        if bwrap and code_fd is not None:
            command, forks = [*_bwrap_command(bwrap, code_fd, shared), "-I", "-S", "-c", _NO_PWD + runner], True
        else:
            prefix = _isolation_prefix()
            command, forks = [*prefix, _python()[0], "-I", "-S", "-c", _NO_NETWORK + runner], "--fork" in prefix
            Path(workdir, _SCRIPT).write_text(code, encoding="utf-8")
            if shared:
                os.mkdir(os.path.join(workdir, _LIBRARY_LINKS))
                for name, directory in shared.items():
                    os.symlink(directory, os.path.join(workdir, _LIBRARY_LINKS, name))
        proc = subprocess.Popen(
            command, cwd=workdir, env={"PATH": _PATH}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
            pass_fds=() if code_fd is None else (code_fd,), start_new_session=True,
            # Only setrlimit and one small write run between fork and exec: no locks to inherit.
            preexec_fn=_limits(memory_mb, cpu, nproc, cgroup),  # noqa: PLW1509
        )
        stdout, stderr, timed_out, over = _communicate(proc, timeout, cgroup, memory_mb * 1024 * 1024)
    finally:
        if code_fd is not None:
            os.close(code_fd)
        if cgroup:
            _remove_cgroup(cgroup)
        _remove_tree(workdir)
    returncode = proc.returncode
    if forks and returncode > 128:
        returncode = 128 - returncode
    timed_out = timed_out or returncode == -signal.SIGXCPU
    if over:
        stderr += f"\n[sandbox: killed, total {over[0]} over the limit]"
    return SandboxResult(
        ok=returncode == 0 and not timed_out and not over, returncode=returncode,
        stdout=stdout, stderr=stderr, timed_out=timed_out,
    )
