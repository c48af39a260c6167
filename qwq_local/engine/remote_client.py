"""HTTP to an OpenAI-compatible engine (vLLM, llama-server, llama_cpp.server): completions, retries, one-line errors."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import httpx

from qwq_local.errors import EngineReplyError, EngineUnreachableError, QwqError

RETRY_STATUS = frozenset({429, 502, 503, 504})
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Choice:
    """One completion choice: its text, why it ended, and per-token log-probs when the server gave them."""

    text: str
    finish_reason: str | None  # "stop" (EOS or a stop string), "length", or what the server says
    stopped_at_string: bool | None  # True/False when the server says which stop it was (vLLM, SGLang), else None
    tokens: list[str] | None = None  # the sampled tokens' texts
    token_logprobs: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    # The sampled tokens' ids, where the log-probs come in the chat API's form (llama-server's): there an
    # end-of-generation token is kept as the last entry, and a stop string's tokens are cut from a whole reply's
    # log-probs (a streamed reply's run on through them).
    token_ids: list[int] | None = None


@dataclass(frozen=True)
class Usage:
    """Token counts of one request as the server reports them."""

    prompt_tokens: int
    completion_tokens: int
    evaluated_prompt_tokens: int | None = None  # prompt tokens it says it evaluated (timings or cached_tokens)


@dataclass(frozen=True)
class Completion:
    choices: list[Choice]
    usage: Usage


@dataclass
class Retry:
    """How often and how patiently a refused or unreachable request is tried again."""

    attempts: int = 5
    first_wait: float = 0.5
    max_wait: float = 8.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def wait(self, attempt: int, retry_after: str | None = None) -> None:
        seconds = min(self.max_wait, self.first_wait * 2**attempt)
        if retry_after:
            try:
                seconds = min(self.max_wait, max(0.0, float(retry_after)))
            except ValueError:
                pass
        self.sleep(seconds)


class CompletionServer:
    """An OpenAI-compatible server at `url`: `/v1/completions` and the discovery endpoints `qwq doctor` reads."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 600.0, retry: Retry | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[: -len("/v1")]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.retry = retry or Retry()
        self.streams: bool | None = None  # False once the server cut a streamed completion short: asked whole
        self._http = httpx.Client(base_url=self.url, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CompletionServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, retry: bool = True) -> Any:
        """The decoded JSON answer to one request; 429/503 and refused connections are retried with back-off."""
        where = f"the engine at {self.url}"
        attempts = self.retry.attempts if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                reply = self._http.request(method, path, json=body)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout) and not last:
                    self.retry.wait(attempt)
                    continue
                raise EngineUnreachableError(f"{where} did not answer {path} within {self.timeout:g} s "
                                             "(stalled or overloaded; engine_timeout sets the limit)") from None
            except httpx.TransportError as exc:
                if not last:
                    self.retry.wait(attempt)
                    continue
                raise EngineUnreachableError(f"cannot reach {where} ({_reason(exc)}); is it running?") from None
            if reply.status_code in RETRY_STATUS and not last:
                self.retry.wait(attempt, reply.headers.get("retry-after"))
                continue
            self._check(reply, path, attempts)
            try:
                return reply.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise EngineReplyError(f"{where} answered {path} with something that is not JSON: "
                                       f"{_snippet(reply.text)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _check(self, reply: httpx.Response, path: str, attempts: int) -> None:
        """An error for an HTTP error status (its body read), nothing for a success."""
        where = f"the engine at {self.url}"
        if reply.status_code < 400:
            return
        reply.read()
        if reply.status_code in RETRY_STATUS:
            raise EngineUnreachableError(f"{where} kept refusing {path} (HTTP {reply.status_code}, "
                                         f"{attempts} tries): {_message(reply)}")
        if reply.status_code in (401, 403):
            raise EngineReplyError(f"{where} refused the API key (HTTP {reply.status_code}); "
                                   "give it with --api-key or QWQ_API_KEY")
        raise EngineReplyError(f"{where} answered {path} with HTTP {reply.status_code}: {_message(reply)}")

    def stream(self, body: dict[str, Any], path: str = "/v1/completions") -> Iterator[dict[str, Any]]:
        """The events of one streamed `path` request (`/v1/completions`, `/v1/chat/completions`); closing the iterator
        ends the request. A server that answers with one JSON body instead gives that as the only event; an event
        that is an error ends the stream with it."""
        where = f"the engine at {self.url}"
        asked = _tokens_asked(body)
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            answered = False
            events = 0
            try:
                with self._http.stream("POST", path, json=dict(body, stream=True)) as reply:
                    answered = True
                    if reply.status_code in RETRY_STATUS and not last:
                        self.retry.wait(attempt, reply.headers.get("retry-after"))
                        continue
                    self._check(reply, path, self.retry.attempts)
                    if reply.headers.get("content-type", "").startswith("application/json"):
                        reply.read()
                        try:
                            yield reply.json()
                        except (json.JSONDecodeError, UnicodeDecodeError):
                            raise EngineReplyError(f"{where} answered {path} with something that is not JSON: "
                                                   f"{_snippet(reply.text)}") from None
                        return
                    for line in reply.iter_lines():
                        if not line.startswith("data:"):
                            continue
                        events += 1  # one a token, and a few more (role, finish, usage): a server that never ends
                        if events > 4 * asked + 64:  # would be read until memory ran out
                            raise EngineReplyError(f"{where} streamed far more than the {asked:,} tokens it was "
                                                   "asked for; stopped reading")
                        data = line[len("data:"):].strip()
                        if data == "[DONE]":
                            return
                        try:
                            event = json.loads(data)
                        except json.JSONDecodeError:
                            raise EngineReplyError(f"{where} streamed something that is not JSON: "
                                                   f"{_snippet(data)}") from None
                        if isinstance(event, dict) and event.get("error"):  # vLLM, llama-server: an error mid-stream
                            error = event["error"]
                            message = error.get("message") if isinstance(error, dict) else error
                            raise EngineReplyError(f"{where} broke off {path}: {_snippet(str(message))}")
                        yield event
                    return
            except httpx.ConnectTimeout:
                if not last:
                    self.retry.wait(attempt)
                    continue
                raise EngineUnreachableError(f"cannot reach {where} (no connection within "
                                             f"{min(CONNECT_TIMEOUT, self.timeout):g} s); is it running?") from None
            except httpx.TimeoutException:
                if not answered:
                    raise EngineUnreachableError(f"{where} did not answer {path} within {self.timeout:g} s "
                                                 "(stalled or overloaded; engine_timeout sets the limit)") from None
                raise EngineUnreachableError(f"{where} stalled for {self.timeout:g} s in the middle of a reply "
                                             "(engine_timeout sets the limit)") from None
            except httpx.TransportError as exc:  # refused, or dropped before it answered: tried again, as request()
                if not answered and not last:
                    self.retry.wait(attempt)
                    continue
                if not answered:
                    raise EngineUnreachableError(f"cannot reach {where} ({_reason(exc)}); is it running?") from None
                raise EngineUnreachableError(f"{where} broke off a reply ({_reason(exc)})") from None

    def text(self, path: str) -> str | None:
        """The plain-text body of GET `path` (`/metrics`), or None when the server has no such page or is away."""
        try:
            reply = self._http.get(path)
        except httpx.HTTPError:
            return None
        return reply.text if reply.status_code == 200 else None

    def models(self) -> list[str]:
        """The model ids the server serves (`/v1/models`)."""
        data = self.request("GET", "/v1/models")
        try:
            return [str(m["id"]) for m in data["data"]]
        except (KeyError, TypeError):
            raise EngineReplyError(f"the engine at {self.url} answered /v1/models with something that is not a "
                                   f"model list: {_snippet(json.dumps(data))}") from None

    def context_length(self, model: str | None = None) -> int | None:
        """The tokens a request (prompt and completion) may hold on this server: vLLM's and SGLang's `max_model_len`
        in /v1/models, llama-server's slot `n_ctx` in /props; None when it says neither."""
        try:
            data = self.request("GET", "/v1/models", retry=False)
            entries = [e for e in data.get("data") or [] if isinstance(e, dict)]
            for entry in sorted(entries, key=lambda e: e.get("id") != model):  # the served model's first
                length = entry.get("max_model_len")
                if isinstance(length, int) and length > 0:
                    return length
            props = self.request("GET", "/props", retry=False)
            length = (props.get("default_generation_settings") or {}).get("n_ctx") if isinstance(props, dict) else None
            return length if isinstance(length, int) and length > 0 else None
        except (QwqError, AttributeError):
            return None

    def complete(self, body: dict[str, Any], into: Chunks | None = None) -> Completion:
        """One `/v1/completions` request -> its choices in index order and its usage.

        Streamed, so that engine_timeout bounds a stall between tokens, not the whole reply (a reply of thousands
        of tokens takes longer than that to write, and was refused as stalled); `into` gathers the chunks as they
        come, for a reply as far as it got when the request is given up (Ctrl-C)."""
        if self.streams is not False:
            chunks = into if into is not None else Chunks()
            asked = _tokens_asked(body)
            for event in self.stream(dict(body, stream_options={"include_usage": True})):
                if chunks.abandoned:  # the caller gave the reply up: closing the stream stops the server too
                    raise Abandoned(f"a request to {self.url} given up")
                if chunks.chars > MAX_TOKEN_CHARS * asked + 65536:  # few chunks, each of them huge
                    raise EngineReplyError(f"the engine at {self.url} streamed far more than the {asked:,} tokens "
                                           "it was asked for; stopped reading")
                try:
                    chunks.add(event)
                except (TypeError, ValueError, AttributeError):
                    raise EngineReplyError(f"the engine at {self.url} streamed something that is not a "
                                           f"completion: {_snippet(json.dumps(event))}") from None
            if chunks.ended:
                return parse_completion(chunks.data(), self.url)
            # The server ended the stream before the reply: llama-cpp-python's server does when the next request
            # comes (its interrupt_requests), and this engine asks several at once. Asked whole, it queues them.
            self.streams = False
            chunks.clear()
        return parse_completion(self.request("POST", "/v1/completions", body), self.url)


MAX_TOKEN_CHARS = 64  # the longest text a token is taken to have, to bound a stream that never ends


def _tokens_asked(body: dict[str, Any]) -> int:
    """The tokens a request may bring back in all: max_tokens (16, OpenAI's default, when unset) for each of its
    n choices."""
    try:
        return max(int(body.get("max_tokens") or 16), 1) * max(int(body.get("n") or 1), 1)
    except (TypeError, ValueError):
        return 16


class Chunks:
    """A streamed completion's chunks joined into the one answer a request without `stream` gets: per choice index
    the texts and log-prob lists concatenated, the last finish_reason (and vLLM's stop_reason beside it), the usage
    and llama-server's timings from the chunks that carry them."""

    def __init__(self) -> None:
        self.clear()
        self.abandoned = False  # set by another thread: the request stops at its next chunk

    def clear(self) -> None:
        self.choices: dict[int, dict[str, Any]] = {}
        self.rest: dict[str, Any] = {}
        self.chars = 0  # of text so far, every choice
        self.per_choice: dict[int, dict[str, Any]] = {}  # usage, timings in a choice's own chunks (llama-server)

    def snapshot(self, index: int) -> dict[str, Any] | None:
        """A copy of choice `index` as far as it came, safe to read while another thread adds chunks (each copy
        below is one step under the GIL)."""
        raw = self.choices.get(index)
        if raw is None:
            return None
        copy = dict(raw)
        logprobs = copy.get("logprobs")
        if isinstance(logprobs, dict):
            copy["logprobs"] = {key: list(value) if isinstance(value, list) else value
                                for key, value in dict(logprobs).items()}
        return copy

    @property
    def ended(self) -> bool:
        """Whether every choice got its finish_reason (a stream cut short by the server has some without)."""
        return bool(self.choices) and all(c["finish_reason"] is not None for c in self.choices.values())

    def add(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise TypeError("a chunk is a JSON object")
        choices = event.get("choices") or []
        for key in ("usage", "timings"):
            if event.get(key) is None:
                continue
            if choices:  # llama-server with n = K: each choice's last chunk has its own slot's usage and timings
                self.per_choice.setdefault(int(choices[0].get("index", 0)), {})[key] = event[key]
            else:  # vLLM: the whole request's, in a last chunk of its own
                self.rest[key] = event[key]
        for raw in choices:
            index = int(raw.get("index", 0))
            into = self.choices.setdefault(index, {"index": index, "text": "", "finish_reason": None})
            text = raw.get("text") or ""
            into["text"] += text
            self.chars += len(text)
            if raw.get("finish_reason") is not None:
                into["finish_reason"] = raw["finish_reason"]
            for said in ("stop_reason", "matched_stop"):  # vLLM's and SGLang's: set in a choice's last chunk
                if said in raw and (raw.get("finish_reason") is not None or said not in into):
                    into[said] = raw[said]
            logprobs = raw.get("logprobs")
            if isinstance(logprobs, dict):
                joined = into.setdefault("logprobs", {})
                for key, value in logprobs.items():
                    if isinstance(value, list):
                        joined.setdefault(key, []).extend(value)
                    else:
                        joined.setdefault(key, value)

    def data(self) -> dict[str, Any]:
        """The joined answer; a usage given per choice is the first choice's, as llama-server answers n = K whole."""
        first = self.per_choice.get(min(self.per_choice)) if self.per_choice else {}
        return {"choices": [self.choices[i] for i in sorted(self.choices)], **first, **self.rest}


class Abandoned(Exception):
    """A streamed request the caller gave up (Ctrl-C): its thread stops reading and closes the stream."""


def parse_completion(data: Any, url: str) -> Completion:
    """A Completion from a `/v1/completions` JSON answer; anything else is an EngineReplyError."""
    try:
        raw = sorted(data["choices"], key=lambda c: int(c.get("index", 0)))
        choices = [_choice(c) for c in raw]
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        parsed = Completion(choices, Usage(prompt_tokens, int(usage.get("completion_tokens") or 0),
                                           _evaluated(data, usage, prompt_tokens)))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise EngineReplyError(f"the engine at {url} answered /v1/completions with something that is not a "
                               f"completion: {_snippet(json.dumps(data) if not isinstance(data, str) else data)}"
                               ) from None
    if not parsed.choices:
        raise EngineReplyError(f"the engine at {url} answered /v1/completions with no choices")
    return parsed


def _evaluated(data: dict[str, Any], usage: dict[str, Any], prompt_tokens: int) -> int | None:
    """The prompt tokens the server says it evaluated: llama-server's `timings.prompt_n`, else the prompt less
    `usage.prompt_tokens_details.cached_tokens` (vLLM, qwq serve); None when it says neither."""
    timings = data.get("timings")
    if isinstance(timings, dict) and timings.get("prompt_n") is not None:
        return int(timings["prompt_n"])
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        return max(prompt_tokens - int(details["cached_tokens"]), 0)
    return None


def _choice(raw: dict[str, Any]) -> Choice:
    text = raw["text"]
    if not isinstance(text, str):
        raise TypeError("text")
    said = raw.get("stop_reason", ...)  # vLLM: the stop string, or None for EOS
    if said is ... or (said is None and raw.get("matched_stop") is not None):
        said = raw.get("matched_stop", ...)  # SGLang: the stop string, or the end token's id (None at a limit)
    stopped_at_string = None if said is ... or raw.get("finish_reason") != "stop" else isinstance(said, str)
    logprobs = raw.get("logprobs") or None
    tokens = token_logprobs = top = ids = None
    if isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):  # the completions API's form
        tokens = [str(t) for t in logprobs["tokens"]]
        token_logprobs = [float(x) if x is not None else 0.0 for x in logprobs.get("token_logprobs") or []]
        top = [_real({str(k): v for k, v in (entry or {}).items()}) for entry in logprobs.get("top_logprobs") or []]
    elif isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):  # the chat API's (llama-server)
        entries = logprobs["content"]
        tokens = [str(e["token"]) for e in entries]
        token_logprobs = [float(e["logprob"]) for e in entries]
        top = [_real({str(t["token"]): t["logprob"] for t in e.get("top_logprobs") or []}) for e in entries]
        if all(isinstance(e.get("id"), int) for e in entries):
            ids = [int(e["id"]) for e in entries]
    return Choice(text, raw.get("finish_reason"), stopped_at_string, tokens, token_logprobs, top, ids)


def _real(top: dict[str, Any]) -> dict[str, float]:
    """A token's top log-probs without the ones a server puts for "cut by top-p" (-inf, or a float's lowest value
    as SGLang clamps it): those say nothing of the model's confidence and would swamp any mean of the rest."""
    out = {}
    for token, value in top.items():
        value = float(value)
        if value > -1e30:
            out[token] = value
    return out


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:120]


def _message(reply: httpx.Response) -> str:
    """The server's own error message when it gives one, else the start of its body."""
    try:
        data = reply.json()
        error = data.get("error", data) if isinstance(data, dict) else data
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message.strip():
            return _snippet(message)
        detail = data.get("detail") if isinstance(data, dict) else None
        if detail:
            return _snippet(json.dumps(detail))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        pass
    return _snippet(reply.text) or "(empty body)"


def _snippet(text: str, limit: int = 160) -> str:
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."
