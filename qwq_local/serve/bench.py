"""`qwq bench serve`: requests/min and tokens/s through the HTTP server at 1, 4, 8 clients vs the model driven directly.

Both sides run the same requests on the same loaded model: directly, one after another through the reply service;
through the server, from N client threads at once over loopback HTTP (the server queues them and runs one at a time).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from qwq_local.app.reply import ReplyRequest, ReplyService
from qwq_local.config import Settings
from qwq_local.dialog.messages import Message

TOPICS = ["owls", "rivers", "copper", "glaciers", "bees", "lighthouses", "volcanoes", "orchids", "comets", "maple trees",
          "harbors", "thunderstorms", "pebbles", "lanterns", "meadows", "violins"]


@dataclass(frozen=True)
class Throughput:
    """Requests answered and tokens generated in `seconds` of wall time."""

    requests: int
    tokens: int
    seconds: float

    @property
    def requests_per_minute(self) -> float:
        return 60 * self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "tokens": self.tokens, "seconds": round(self.seconds, 3),
                "requests_per_minute": round(self.requests_per_minute, 2),
                "tokens_per_second": round(self.tokens_per_second, 2)}


@dataclass(frozen=True)
class ServeBenchRow:
    """One concurrency level: the same requests through the server and directly."""

    clients: int
    served: Throughput
    direct: Throughput

    @property
    def ratio(self) -> float:
        """Server tokens/s over direct tokens/s (1.0: the server costs nothing)."""
        return self.served.tokens_per_second / self.direct.tokens_per_second if self.direct.tokens_per_second else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"clients": self.clients, "server": self.served.to_json(), "direct": self.direct.to_json(),
                "ratio": round(self.ratio, 3)}


def questions(n: int, offset: int = 0) -> list[str]:
    return [f"Tell me two facts about {TOPICS[(offset + i) % len(TOPICS)]}." for i in range(n)]


def run_serve_bench(settings: Settings, levels: Sequence[int], requests: int, max_tokens: int) -> list[ServeBenchRow]:
    """For each client count: `requests` chat requests of `max_tokens` (greedy) through the server, then directly."""
    import uvicorn

    from qwq_local.serve.app import create_app
    from qwq_local.serve.options import ServeOptions

    service = ReplyService.load(settings)
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        options = ServeOptions(port=port, queue=max(max(levels) * 2, 8))
        server = uvicorn.Server(uvicorn.Config(create_app(service, options), host="127.0.0.1", port=port,
                                               access_log=False, log_level="warning"))
        thread = threading.Thread(target=server.run, name="qwq-bench-server", daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        _wait_until_up(f"http://127.0.0.1:{port}/v1/models", server)
        rows = []
        try:
            _through_server(url, service.name, questions(1, offset=len(TOPICS) - 1), 1, max_tokens)  # warm up
            for level, clients in enumerate(levels):
                asked = questions(requests, offset=level * requests)
                served = _through_server(url, service.name, asked, clients, max_tokens)
                direct = _direct(service, asked, max_tokens)
                rows.append(ServeBenchRow(clients, served, direct))
        finally:
            server.should_exit = True
            thread.join(timeout=30)
        return rows
    finally:
        service.close()


def _wait_until_up(url: str, server: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.started:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError("the benchmark's server did not start within 60 s")


def _through_server(url: str, model: str, asked: list[str], clients: int, max_tokens: int) -> Throughput:
    def one(question: str) -> int:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}],
                           "max_tokens": max_tokens, "temperature": 0}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=3600) as response:
            return int(json.load(response)["usage"]["completion_tokens"])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(one, asked))
    return Throughput(len(asked), tokens, time.perf_counter() - start)


def _direct(service: ReplyService, asked: list[str], max_tokens: int) -> Throughput:
    from dataclasses import replace

    sampling = replace(service.sampling, temperature=0.0, max_tokens=max_tokens)
    start = time.perf_counter()
    tokens = 0
    for question in asked:
        result = service.reply(ReplyRequest((Message("user", question),), sampling), lambda event: None)
        tokens += result.completion_tokens
    return Throughput(len(asked), tokens, time.perf_counter() - start)
