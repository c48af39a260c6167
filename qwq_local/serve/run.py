"""Run the server: load the model once, serve until Ctrl-C, cancel what is in flight, free the model."""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import Callable

from qwq_local.config import Settings
from qwq_local.errors import UsageError
from qwq_local.serve.options import ServeOptions

GRACE_SECONDS = 3  # Ctrl-C: streams still open after this long are closed (their generation is cancelled)


def serve(settings: Settings, options: ServeOptions, before_load: Callable[[], None] = lambda: None) -> None:
    """Load `settings.model` and serve the OpenAI API on `options.host:port` until interrupted (`before_load`: after
    the checks, before the model is located; the CLI asks there before a large download)."""
    import uvicorn

    from qwq_local.app.reply import SEARCH_STRATEGIES, ReplyService
    from qwq_local.serve.app import create_app

    options.check()
    _check_free(options.host, options.port)  # before a model that may take minutes to load
    before_load()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("qwq.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    service = ReplyService.load(settings)
    try:
        app = create_app(service, options)
        config = uvicorn.Config(app, host=options.host, port=options.port, access_log=False, log_level="warning",
                                timeout_graceful_shutdown=GRACE_SECONDS, lifespan="on")
        server = uvicorn.Server(config)
        url = f"http://{'[' + options.host + ']' if ':' in options.host else options.host}:{options.port}/v1"
        log.info("qwq serve: %s (and +%s for search) at %s%s", service.name, ", +".join(SEARCH_STRATEGIES), url,
                 "" if options.api_key else ", no API key")
        previous = signal.signal(signal.SIGTERM, _interrupt)  # uvicorn re-raises it after its shutdown
        try:
            server.run()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: uvicorn has already closed every request
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        service.close()
        log.info("qwq serve: stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _check_free(host: str, port: int) -> None:
    """A usage error now if the address cannot be bound (a port in use, a host not on this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
