"""Hugging Face hub settings read from the environment at call time (huggingface_hub reads them at import).

The same variables, precedence and defaults as `huggingface_hub.constants` (HF_HOME, HF_HUB_CACHE, HF_TOKEN,
HF_TOKEN_PATH), so the cache qwq reuses is the one the `hf` tools see; a test holds the two to agreement.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "on", "yes", "true"}


def offline_mode(env: Mapping[str, str] = os.environ) -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network at all."""
    return any(env.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@dataclass(frozen=True)
class HubSettings:
    """Endpoint, token, offline flag and cache location for one pull."""

    endpoint: str
    token: str | None
    offline: bool
    hf_home: Path
    etag_timeout: float = 10.0
    hf_hub_cache: Path | None = None  # HF_HUB_CACHE when set, else HF_HOME/hub

    @property
    def hub_cache(self) -> Path:
        return self.hf_hub_cache or self.hf_home / "hub"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> HubSettings:
        """Read HF_ENDPOINT, HF_TOKEN (or the token file under HF_HOME), HF_HUB_OFFLINE, HF_HOME now."""
        hf_home = Path(env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
        hub_cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
        return cls(
            endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            token=_token(env, hf_home),
            offline=offline_mode(env),
            hf_home=hf_home.expanduser(),
            etag_timeout=float(env.get("HF_HUB_ETAG_TIMEOUT") or 10.0),
            hf_hub_cache=Path(hub_cache).expanduser() if hub_cache else None,
        )


def _token(env: Mapping[str, str], hf_home: Path) -> str | None:
    token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN")
    if token and token.strip():
        return token.strip()
    token_file = Path(env.get("HF_TOKEN_PATH") or hf_home / "token").expanduser()
    try:
        return token_file.read_text().strip() or None
    except OSError:
        return None


def hub_reachable(timeout: float = 3.0, env: Mapping[str, str] = os.environ) -> bool:
    """Whether the hub endpoint answers HTTP at all (any status counts); ignores the offline flag."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(HubSettings.from_env(env).endpoint + "/api/whoami-v2", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
