"""The OpenAI wire format: request bodies checked into a ReplyRequest, replies and errors shaped as OpenAI's."""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

from qwq_local.app.reply import (REASONING_EFFORT, SEARCH_STRATEGIES, Delta, ReplyRequest, ReplyResult,
                                 SearchChoice)
from qwq_local.app.search import CHAT_SEARCH, check_scorers, search_defaults, search_options
from qwq_local.config import Sampling
from qwq_local.dialog.messages import Message, TokenLogprob
from qwq_local.errors import UsageError
from qwq_local.search.strategies import needs_scorer

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4
MAX_LOGPROBS = 20  # alternatives per token a text completion may ask for (vLLM's default cap)
# The search knobs a request may set, and their types.
SEARCH_FIELDS: dict[str, type] = {"candidates": int, "trajectories": int, "beam": int, "beam_width": int,
                                  "lam": float, "agg": str, "max_expansions": int, "max_depth": int,
                                  "time_limit": float, "completions": int, "choose": str,
                                  "expand_width": int, "widen": int, "settle": float}
assert set(SEARCH_FIELDS) <= {f.name for f in fields(CHAT_SEARCH)}


class ApiError(Exception):
    """A request that gets an OpenAI-shaped error body with this status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


@dataclass(frozen=True)
class Limits:
    """What a request may ask for: the model ids served, the most tokens, the default thinking budget."""

    model: str
    max_tokens: int
    sampling: Sampling
    think_budget: int | None = None

    def model_ids(self) -> list[str]:
        return [self.model] + [f"{self.model}+{s}" for s in SEARCH_STRATEGIES]


@dataclass(frozen=True)
class Parsed:
    """A checked request: what to run, whether to stream, and the model id to answer as."""

    request: ReplyRequest
    model: str
    stream: bool
    include_usage: bool


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    return body


def parse_chat(body: dict[str, Any], limits: Limits) -> Parsed:
    """A /v1/chat/completions body -> Parsed (ApiError 400/404 for what is wrong with it)."""
    model, search = _model(body, limits)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty array", "messages")
    parsed = tuple(_message(m, i) for i, m in enumerate(messages))
    _refuse_unsupported(body, chat=True)
    if "search" in body and body["search"] is not None:
        search = _search(body["search"], search)
    if search is not None:
        _check_search(search, parsed)
    think_budget = _think_budget(body, limits)
    request = ReplyRequest(parsed, _sampling(body, limits), think_budget=think_budget, stop=_stops(body),
                           search=search)
    return Parsed(request, model, *_stream(body))


def parse_completion(body: dict[str, Any], limits: Limits) -> Parsed:
    """A /v1/completions body -> Parsed: a raw prompt to continue (no thinking, no search)."""
    model, search = _model(body, limits)
    if search is not None or body.get("search") is not None:
        raise bad("search answers chat completions only; use /v1/chat/completions", "model")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad("prompt must be a non-empty string", "prompt")
    if body.get("echo"):
        raise bad("echo is not supported", "echo")
    logprobs = _number(body, "logprobs", int, 0, MAX_LOGPROBS)  # the completions API's: alternatives per token
    _refuse_unsupported(dict(body, logprobs=None), chat=False)
    request = ReplyRequest((), _sampling(body, limits), prompt=prompt, stop=_stops(body), logprobs=logprobs)
    return Parsed(request, model, *_stream(body))


def _model(body: dict[str, Any], limits: Limits) -> tuple[str, SearchChoice | None]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model must be a string naming a model from /v1/models", "model")
    if model not in limits.model_ids():
        raise ApiError(404, f"the model {model!r} does not exist; this server has {', '.join(limits.model_ids())}",
                       code="model_not_found", param="model")
    _, _, strategy = model.partition("+")  # the same knobs as `/search STRATEGY` in `qwq chat`
    return model, SearchChoice(strategy, search_defaults(strategy, CHAT_SEARCH)) if strategy else None


def _check_search(search: SearchChoice, messages: tuple[Message, ...]) -> None:
    """What the search service would refuse, refused here: a 400 before a stream's 200 and its first event."""
    if messages[-1].role != "user":
        raise bad("a search answers the last message, which must be the user's", "messages")
    if search.scorer is not None:
        if not needs_scorer(search.strategy):
            raise bad(f"search.scorer: {search.strategy} uses no scorer (self-consistency votes on answers)",
                      "search.scorer")
        try:
            check_scorers(search.scorer)
        except UsageError as exc:
            raise bad(exc.message.replace("--scorer", "search.scorer"), "search.scorer") from None


def _refuse_unsupported(body: dict[str, Any], chat: bool) -> None:
    """A 400 for what a client asks of the reply that this server cannot give, rather than a reply without it
    (an agent that sent tools would get prose and stop; a JSON schema would go unenforced)."""
    tools = body.get("tools") or body.get("functions")
    if tools and body.get("tool_choice", body.get("function_call")) != "none":
        raise bad("tools are not supported: this server answers in text only (send no tools, or "
                  "tool_choice \"none\")", "tools")
    form = body.get("response_format")
    if form is not None and (not isinstance(form, dict) or form.get("type", "text") != "text"):
        raise bad("response_format: only {\"type\": \"text\"} is supported", "response_format")
    if not chat and body.get("top_logprobs"):
        raise bad("top_logprobs is the chat API's; a text completion takes logprobs: N (0 to 20)", "top_logprobs")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad("logprobs are given on /v1/completions only", "logprobs" if body.get("logprobs") else
                  "top_logprobs")
    if body.get("logit_bias"):
        raise bad("logit_bias is not supported", "logit_bias")
    frequency = _number(body, "frequency_penalty", float, -2, 2)
    if frequency:
        raise bad("frequency_penalty is not supported; use presence_penalty (QwQ's card: 0 to 2) or "
                  "repeat_penalty", "frequency_penalty")
    if chat and body.get("stream_options") is not None and body.get("stream") is not True:
        raise bad("stream_options is only allowed when stream is true", "stream_options")


def _message(item: Any, i: int) -> Message:
    where = f"messages[{i}]"
    if not isinstance(item, dict):
        raise bad(f"{where} must be an object", where)
    role = item.get("role")
    if role not in ROLES:
        raise bad(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
    content = item.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content: only text parts are supported", f"{where}.content")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise bad(f"{where}.content must be a string", f"{where}.content")
    return Message(ROLES[role], content)


def _number(body: dict[str, Any], name: str, kind: type, low: float | None = None,
            high: float | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or not math.isfinite(value):
        raise bad(f"{name} must be {'an integer' if kind is int else 'a number'}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise bad(f"{name} must be {_range(low, high)}, got {value}", name)
    return kind(value)


def _range(low: float | None, high: float | None) -> str:
    if high is None:
        return f">= {low}"
    return f"from {low} to {high}" if low is not None else f"<= {high}"


def _sampling(body: dict[str, Any], limits: Limits) -> Sampling:
    n = _number(body, "n", int)
    if n not in (None, 1):
        raise bad("n must be 1: one choice per request", "n")
    max_tokens = _number(body, "max_completion_tokens", int, 1)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int, 1)
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise bad(f"max_tokens must be at most {limits.max_tokens} on this server, got {max_tokens}", "max_tokens")
    changes = {
        "temperature": _number(body, "temperature", float, 0, 2),
        "top_p": _number(body, "top_p", float, 0, 1),
        "top_k": _top_k(_number(body, "top_k", int, -1)),
        "min_p": _number(body, "min_p", float, 0, 1),
        "seed": _number(body, "seed", int),
        "max_tokens": max_tokens,
        "presence_penalty": _number(body, "presence_penalty", float, 0, 2),  # OpenAI's -2..2; below 0 is refused
        "repeat_penalty": _number(body, "repeat_penalty", float),  # llama-server's own name
    }
    base = replace(limits.sampling, max_tokens=min(limits.sampling.max_tokens, limits.max_tokens))
    try:
        return replace(base, **{k: v for k, v in changes.items() if v is not None}).validate()
    except UsageError as exc:
        raise bad(exc.message.replace("--", "").replace("-", "_")) from None


def _top_k(value: int | None) -> int | None:
    """vLLM's -1 ("no top-k") is 0 here, as in llama.cpp."""
    return 0 if value == -1 else value


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOPS:
        raise bad(f"stop must be a string or an array of at most {MAX_STOPS} strings", "stop")
    return tuple(s for s in stops if s)


def _think_budget(body: dict[str, Any], limits: Limits) -> int | None:
    budget = _number(body, "thinking_budget", int, 1)
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in REASONING_EFFORT:
            raise bad(f"reasoning_effort must be one of {', '.join(REASONING_EFFORT)}", "reasoning_effort")
        if budget is None:
            budget = REASONING_EFFORT[effort]
    return budget if budget is not None else limits.think_budget


def _search(value: Any, from_model: SearchChoice | None) -> SearchChoice | None:
    if not isinstance(value, dict):
        raise bad("search must be an object such as {\"strategy\": \"astar\", \"candidates\": 4}", "search")
    strategy = value.get("strategy", from_model.strategy if from_model else None)
    if strategy == "direct":
        return None
    if strategy not in SEARCH_STRATEGIES:
        raise bad(f"search.strategy must be one of direct, {', '.join(SEARCH_STRATEGIES)}", "search.strategy")
    unknown = sorted(set(value) - set(SEARCH_FIELDS) - {"strategy", "scorer"})
    if unknown:
        raise bad(f"search: unknown fields {', '.join(unknown)}; known: {', '.join(SEARCH_FIELDS)}, scorer",
                  "search")
    changes = {}
    for name, kind in SEARCH_FIELDS.items():
        if value.get(name) is None:  # absent or null: the strategy's default (never "no limit")
            continue
        if kind is str:
            if not isinstance(value[name], str):
                raise bad(f"search.{name} must be a string", f"search.{name}")
            changes[name] = value[name]
        else:
            changes[name] = _number(value, name, kind)
    scorer = value.get("scorer")
    if scorer is not None and not isinstance(scorer, str):
        raise bad("search.scorer must be a string such as \"self-eval+rules\"", "search.scorer")
    try:  # the CLI's bounds: every width holds KV cells and llama.cpp sequences
        config = search_options(search_defaults(strategy, CHAT_SEARCH), **changes)
    except UsageError as exc:
        raise bad("search: " + re.sub(r"--([a-z-]+)", lambda m: "search." + m.group(1).replace("-", "_"),
                                      exc.message).replace("search.lambda", "search.lam"), "search") from None
    return SearchChoice(strategy, config, scorer)


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options")
    return stream, bool(options.get("include_usage"))


# Replies.

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(result: ReplyResult) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": result.thinking_tokens},
    }


def chat_reply(rid: str, model: str, result: ReplyResult) -> dict[str, Any]:
    thinking = result.thinking or None  # under both names: vLLM's `reasoning`, llama-server's `reasoning_content`
    message: dict[str, Any] = {"role": "assistant", "content": result.answer, "reasoning": thinking,
                               "reasoning_content": thinking}
    out: dict[str, Any] = {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": usage(result),
    }
    if result.search is not None:
        out["search"] = result.search.__dict__
    return out


def chat_chunk(rid: str, model: str, delta: dict[str, Any], finish: str | None = None,
               result: ReplyResult | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if result is not None and result.search is not None:
        out["search"] = result.search.__dict__
    return out


def chat_delta(event: Delta) -> dict[str, Any]:
    if event.kind == "thinking":
        return {"reasoning": event.text, "reasoning_content": event.text}
    return {"content": event.text}


def completion_reply(rid: str, model: str, result: ReplyResult) -> dict[str, Any]:
    choice = {"index": 0, "text": result.answer, "finish_reason": result.finish_reason,
              "stop_reason": result.stop, "logprobs": completion_logprobs(result.logprobs)}
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage(result)}


def completion_chunk(rid: str, model: str, text: str, logprobs: Sequence[TokenLogprob] | None = None,
                     result: ReplyResult | None = None, offset: int = 0) -> dict[str, Any]:
    """A streamed piece of a text completion (`offset`: characters streamed before it), or (with `result`) its
    last chunk: why it ended."""
    choice = {"index": 0, "text": text, "finish_reason": result.finish_reason if result else None,
              "logprobs": completion_logprobs(logprobs, offset)}
    if result is not None:
        choice["stop_reason"] = result.stop
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [choice]}


def completion_logprobs(tokens: Sequence[TokenLogprob] | None, offset: int = 0) -> dict[str, Any] | None:
    """The completions API's log-probs (vLLM's and llama-cpp-python's form): at a stop sequence they run on
    through the token that reaches into it, as llama.cpp's servers give them."""
    if not tokens:
        return None
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [dict(t.top) or {t.text: t.logprob} for t in tokens],  # logprobs 0: the token, as vLLM
            "text_offset": offsets}


def usage_chunk(rid: str, model: str, obj: str, result: ReplyResult) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(result)}
