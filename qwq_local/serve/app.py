"""The Starlette app: `/v1/models`, `/v1/chat/completions`, `/v1/completions` over one ReplyService, and
`/health` for probes."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwq_local.app.reply import Cancelled, Delta, Event, Progress, ReplyResult, ReplyService
from qwq_local.errors import QwqError
from qwq_local.serve import api
from qwq_local.serve.api import ApiError, Limits, Parsed
from qwq_local.serve.options import ServeOptions
from qwq_local.serve.queue import GenerationQueue, Job

log = logging.getLogger("qwq.serve")
PING_SECONDS = 5  # an SSE comment at least this often, so that clients and proxies do not time out
SSE_SEP = "\n"  # lines end as vLLM's and OpenAI's do (sse-starlette's default is \r\n)
_DONE = object()


def create_app(service: ReplyService, options: ServeOptions = ServeOptions()) -> Starlette:
    """The OpenAI-compatible app over `service` (the loaded model, or in tests a scripted one)."""
    limits = Limits(service.name, options.max_tokens or service.n_ctx, service.sampling,
                    options.think_budget)
    queue = GenerationQueue(options.queue)

    async def models(request: Request) -> Response:
        _authorize(request, options)
        created = int(time.time())
        return JSONResponse({"object": "list", "data": [
            {"id": mid, "object": "model", "created": created, "owned_by": "qwq"} for mid in limits.model_ids()]})

    async def health(request: Request) -> Response:
        """llama-server's and vLLM's probe: no key needed, 503 once the server is stopping."""
        if queue.closed:
            return JSONResponse({"status": "stopping"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def chat(request: Request) -> Response:
        _authorize(request, options)
        parsed = api.parse_chat(api.parse_body(await _body(request, options.max_body_bytes)), limits)
        return await _answer(request, parsed, "chat.completion")

    async def completions(request: Request) -> Response:
        _authorize(request, options)
        parsed = api.parse_completion(api.parse_body(await _body(request, options.max_body_bytes)), limits)
        return await _answer(request, parsed, "text_completion")

    async def _answer(request: Request, parsed: Parsed, kind: str) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()

        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = queue.submit(lambda cancelled: service.reply(parsed.request, emit, cancelled))
        job.future.add_done_callback(lambda _: events.put_nowait(_DONE))
        rid = api.new_id("chatcmpl" if kind == "chat.completion" else "cmpl")
        if parsed.stream:
            return _stream(request, parsed, kind, rid, job, events)
        result = await _wait(request, job)
        _note(request, result)
        if kind == "chat.completion":
            return JSONResponse(api.chat_reply(rid, parsed.model, result))
        return JSONResponse(api.completion_reply(rid, parsed.model, result))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await queue.start()
        try:
            yield
        finally:
            await queue.close()

    middleware = [Middleware(RequestLog)]
    if options.cors:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(options.cors), allow_methods=["GET", "POST"],
                                     allow_headers=["*"]))  # the openai SDKs send x-stainless-* headers
    routes = [
        Route("/health", health, methods=["GET"]),
    ] + [route  # under /v1, and as llama-server also serves them, without it (a client whose base URL lacks /v1)
         for prefix in ("/v1", "")
         for route in (Route(f"{prefix}/models", _guarded(models), methods=["GET"]),
                       Route(f"{prefix}/chat/completions", _guarded(chat), methods=["POST"]),
                       Route(f"{prefix}/completions", _guarded(completions), methods=["POST"]))]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    return app


def _guarded(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """The endpoint with every failure turned into an OpenAI-shaped error: never a traceback to the client."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ApiError as exc:
            return _error(request, exc)
        except Cancelled as exc:
            return _error(request, ApiError(499, f"the client went away: {exc}", code="cancelled"))
        except QwqError as exc:  # a usage error found by the service (a context too small, a scorer unknown)
            return _error(request, ApiError(400, exc.message))
        except Exception as exc:
            log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
            return _error(request, ApiError(500, "internal server error", type="server_error"))

    return guarded


def _error(request: Request, exc: ApiError) -> JSONResponse:
    request.state.note = exc.message
    headers = {"Retry-After": "1"} if exc.status == 429 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _error(request, ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                    code=code))


def _authorize(request: Request, options: ServeOptions) -> None:
    if options.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), options.api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer KEY`",
                       type="authentication_error", code="invalid_api_key")


async def _body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise ApiError(413, f"the request body is larger than {limit:,} bytes", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is larger than {limit:,} bytes", code="request_too_large")
    return bytes(body)


async def _wait(request: Request, job: Job) -> ReplyResult:
    """The job's result; a client that goes away meanwhile cancels it (its slot is freed at the next token)."""
    try:
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=0.5)
            if done:
                return job.future.result()
            if await request.is_disconnected():
                job.cancel()
    finally:
        if not job.future.done():
            job.cancel()


def _stream(request: Request, parsed: Parsed, kind: str, rid: str, job: Job, events: asyncio.Queue[Any]
            ) -> Response:
    from sse_starlette.sse import EventSourceResponse, ServerSentEvent

    chat = kind == "chat.completion"

    def data(payload: dict[str, Any]) -> ServerSentEvent:
        return ServerSentEvent(data=json.dumps(payload, ensure_ascii=False), sep=SSE_SEP)

    async def chunks() -> AsyncIterator[ServerSentEvent]:
        sent = 0  # characters of the tokens whose log-probs were streamed so far (the next one's text offset)
        try:
            if chat:
                yield data(api.chat_chunk(rid, parsed.model, {"role": "assistant", "content": ""}))
            while True:
                event = await events.get()
                if event is _DONE:
                    break
                if isinstance(event, Progress):
                    yield ServerSentEvent(comment=event.text, sep=SSE_SEP)
                elif isinstance(event, Delta):
                    if chat:
                        yield data(api.chat_chunk(rid, parsed.model, api.chat_delta(event)))
                    elif event.text or event.logprobs:
                        yield data(api.completion_chunk(rid, parsed.model, event.text, event.logprobs, offset=sent))
                        sent += sum(len(token.text) for token in event.logprobs)
            try:
                result = job.future.result()
            except ApiError as exc:
                yield data(exc.body())
            except QwqError as exc:
                yield data(ApiError(400, exc.message).body())
            except Cancelled as exc:
                request.state.note = f"client went away: {exc}"
                return
            except Exception as exc:
                log.error("internal error while streaming: %s: %s", type(exc).__name__, exc)
                yield data(ApiError(500, "internal server error", type="server_error").body())
            else:
                _note(request, result)
                if chat:
                    yield data(api.chat_chunk(rid, parsed.model, {}, result.finish_reason, result))
                else:
                    yield data(api.completion_chunk(rid, parsed.model, "", result=result))
                if parsed.include_usage:
                    yield data(api.usage_chunk(rid, parsed.model, kind + ("" if not chat else ".chunk"), result))
            yield ServerSentEvent(data="[DONE]", sep=SSE_SEP)
        finally:
            if not job.future.done():
                job.cancel()
                job.future.add_done_callback(lambda f: _log_cancelled(f, request.method, request.url.path))

    return EventSourceResponse(chunks(), ping=PING_SECONDS, sep=SSE_SEP)


def _log_cancelled(future: "asyncio.Future[Any]", method: str, path: str) -> None:
    """The line for a stream whose client went away, once its generation has stopped."""
    exc = None if future.cancelled() else future.exception()
    if isinstance(exc, Cancelled):
        log.info("%s %s stopped: the client went away (%s)", method, path, exc)


def _note(request: Request, result: ReplyResult) -> None:
    request.state.tokens = (result.prompt_tokens, result.completion_tokens)
    request.state.note = result.finish_reason


class RequestLog:
    """One log line per request: method, path, status, tokens (prompt+completion), seconds, and a note."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [0]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            state = scope.get("state") or {}
            tokens = state.get("tokens")
            used = f"{tokens[0]}+{tokens[1]} tokens" if tokens else "-"
            note = state.get("note")
            log.info("%s %s %s %s %.2fs%s", scope["method"], scope["path"], status[0] or "-", used,
                     time.perf_counter() - start, f" ({note})" if note else "")
