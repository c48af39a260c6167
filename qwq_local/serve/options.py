"""How the server runs: address, key, limits. Declared once; `qwq serve`'s flags are made from these fields."""

from __future__ import annotations

from dataclasses import dataclass

from qwq_local.errors import UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeOptions:
    """The server's address, its API key and CORS origin, and the bounds every request is held to."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # required as `Authorization: Bearer KEY`; must be set off loopback
    cors: tuple[str, ...] = ()  # origins allowed by CORS; none: CORS off
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_tokens: int | None = None  # the most tokens a request may ask for (None: the model's context)
    queue: int = 32  # requests waiting beside the one running; more get 429
    think_budget: int | None = None  # thinking budget for requests that give none

    def check(self) -> "ServeOptions":
        """A usage error for an unsafe or impossible setting (any non-loopback address needs an API key)."""
        if self.host not in LOOPBACK and not self.api_key:
            raise UsageError(f"--host {self.host} makes the server reachable from other machines: "
                             "give --api-key KEY (or bind 127.0.0.1)")
        if self.api_key is not None and len(self.api_key) < 8:
            raise UsageError("--api-key must be at least 8 characters")
        if not 0 <= self.port <= 65535:
            raise UsageError("--port must be from 0 to 65535")
        if self.max_body_bytes < 1024:
            raise UsageError("--max-body must be at least 1024 bytes")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UsageError("--max-tokens-limit must be at least 1")
        if self.queue < 0:
            raise UsageError("--queue must be >= 0")
        if self.think_budget is not None and self.think_budget < 1:
            raise UsageError("--think-budget must be at least 1 token")
        return self
