"""A server the tests start as a child process: a free loopback port, its output lines read as they come, ready
once a GET answers 200, and gone with the test process even when that one is killed."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from typing import Callable

import httpx


def _die_with_parent() -> None:
    """The server goes when the test process does (Linux: PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class ServerProcess:
    """`argv(port)` started on a free loopback port; `ready` is the path a GET of answers 200 once it serves."""

    def __init__(self, name: str, argv: Callable[[int], list[str]], ready: str, wait: float = 120) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.name = name
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(argv(self.port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     errors="replace", preexec_fn=_die_with_parent)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: " + "".join(self.lines[-5:]))
            try:
                if httpx.get(self.url + ready, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{name} did not come up in {wait:g} s")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
