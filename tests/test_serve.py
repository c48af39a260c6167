"""`qwq serve`'s app on a scripted chat model and scripted search: wire format, thinking, stops, errors, queue."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from starlette.testclient import TestClient

from qwq_local.app import runtime
from qwq_local.app.reply import Cancelled, Delta, ReplyRequest, ReplyService, SearchRunner, StopScanner
from qwq_local.config import Sampling, load_settings
from qwq_local.dialog.messages import Message
from qwq_local.dialog.guard import BUDGET_TEXT
from qwq_local.serve.app import create_app
from qwq_local.serve.options import ServeOptions
from tests.fake_chat import FakeChat
from tests.fakes import ScriptedPolicy, script_from_tree, write_tiny_gguf

KEY = "sk-test-0123456789"
USER = [{"role": "user", "content": "What is 6 times 7?"}]
LONG_THINKING = "<think>\n" + " ".join(f"step{i}" for i in range(40)) + "\n</think>\n\nThe answer is 42."
SCRIPT = script_from_tree({"6 times 7 is 42.\n\n": {"So the answer is \\boxed{42}.": None},
                           "6 times 7 is 48.\n\n": {"So the answer is \\boxed{48}.": None}})


@pytest.fixture
def chat() -> FakeChat:
    return FakeChat(name="fake")


@pytest.fixture
def search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SearchRunner:
    """The search service on a header-only GGUF and one ScriptedPolicy per search: nothing is loaded."""
    monkeypatch.setattr(runtime, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    settings = load_settings({"model": str(write_tiny_gguf(tmp_path / "tiny.gguf"))})
    plan = runtime.plan_model(runtime.locate(settings.model, settings), settings)

    @contextlib.contextmanager
    def policies(setup: Any, sampling: Any, history: Any = ()) -> Iterator[ScriptedPolicy]:
        policy = ScriptedPolicy(SCRIPT)
        policy.history_seen = list(history)  # type: ignore[attr-defined]
        yield policy

    return SearchRunner(plan, settings, policies)


def client(chat: FakeChat, search: SearchRunner | None = None, **options: Any) -> TestClient:
    service = ReplyService(chat, "fake", sampling=Sampling(max_tokens=512), search=search)
    return TestClient(create_app(service, ServeOptions(**options)))


def events(response: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(data payloads before [DONE], comment lines) of an SSE response; fails without a final [DONE]."""
    payloads, comments, done = [], [], False
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
            else:
                assert not done
                payloads.append(json.loads(data))
        elif line.startswith(":"):
            comments.append(line[1:].strip())
    assert done, "the stream ended without data: [DONE]"
    return payloads, comments


def test_models_lists_the_model_and_its_search_ids(chat: FakeChat) -> None:
    with client(chat) as c:
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert ids == ["fake", "fake+astar", "fake+beam", "fake+bon", "fake+sc"]


def test_thinking_goes_to_reasoning_content_and_usage_counts_it(chat: FakeChat) -> None:
    with client(chat) as c:
        body = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER}).json()
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "The answer is 42.",
                                 "reasoning": "Let me think about it.", "reasoning_content": "Let me think about it."}
    assert choice["finish_reason"] == "stop" and body["object"] == "chat.completion"
    usage = body["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == chat.last_stats.thinking_tokens > 0
    assert usage["completion_tokens"] == chat.last_stats.thinking_tokens + chat.last_stats.answer_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_stream_sends_reasoning_deltas_then_content_then_usage_and_done(chat: FakeChat) -> None:
    with client(chat) as c, c.stream("POST", "/v1/chat/completions", json={
            "model": "fake", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        payloads, _ = events(r)
    deltas = [p["choices"][0]["delta"] for p in payloads if p["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    kinds = [next(iter(d)) for d in deltas[1:-1]]
    assert kinds == sorted(kinds, reverse=True)  # every reasoning delta before every content delta
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think about it.\n"
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)  # vLLM's name and llama-server's
    assert "".join(d.get("content", "") for d in deltas) == "The answer is 42."
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"]


def test_thinking_sent_back_in_the_history_is_stripped_before_the_model_sees_it(chat: FakeChat) -> None:
    history = [*USER, {"role": "assistant", "content": "<think>\nsecret musing\n</think>\n\n42.",
                       "reasoning_content": "secret musing"},
               {"role": "developer", "content": "Be brief."}, {"role": "user", "content": [
                   {"type": "text", "text": "And 6 times 8?"}]}]
    with client(chat) as c:
        assert c.post("/v1/chat/completions", json={"model": "fake", "messages": history}).status_code == 200
    assert [(m.role, m.content) for m in chat.calls[-1]] == [
        ("user", "What is 6 times 7?"), ("assistant", "42."), ("system", "Be brief."), ("user", "And 6 times 8?")]


def test_a_thinking_budget_closes_the_thinking_and_opens_it_on_any_model(chat: FakeChat) -> None:
    chat.replies = [LONG_THINKING, LONG_THINKING, LONG_THINKING]
    with client(chat, think_budget=30) as c:
        small = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER, "thinking_budget": 5}).json()
        low = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER,
                                                     "reasoning_effort": "low"}).json()
        default = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER}).json()
    assert chat.thinks_asked == [True, True, True]
    message = small["choices"][0]["message"]
    assert message["reasoning_content"] == "step0 step1 step2" + BUDGET_TEXT.split("</think>")[0].rstrip()
    assert message["content"] == "The answer is 42."
    assert low["choices"][0]["message"]["reasoning_content"].endswith("step39")  # 1,024 tokens: never reached
    assert "Time is up" in default["choices"][0]["message"]["reasoning_content"]  # the server's --think-budget 30


def test_stop_sequences_end_the_answer_even_split_across_pieces(chat: FakeChat) -> None:
    chat.replies = ["<think>\nThe answer is 42 surely.\n</think>\n\nThe answer is 42, since 6*7=42."] * 2
    with client(chat) as c:
        body = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER,
                                                      "stop": [" 4", "never"]}).json()
        with c.stream("POST", "/v1/chat/completions", json={"model": "fake", "messages": USER, "stop": "is 4",
                                                            "stream": True}) as r:
            payloads, _ = events(r)
    assert body["choices"][0]["message"]["content"] == "The answer is"
    assert body["choices"][0]["message"]["reasoning_content"] == "The answer is 42 surely."  # thinking is not cut
    assert body["choices"][0]["finish_reason"] == "stop"
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in payloads) == "The answer "
    assert chat.closed == 2  # the generation stopped at the stop sequence


def test_scanner_holds_back_a_possible_stop_until_it_is_decided() -> None:
    scanner = StopScanner(["END"])
    assert [scanner.feed(p) for p in ["abc E", "N", "x", " EN", "D tail"]] == ["abc ", "", "ENx", " ", ""]
    assert scanner.hit and scanner.close() == ""


def test_text_completions_continue_the_raw_prompt(chat: FakeChat) -> None:
    chat.replies = [" 6, 7, 8, 9", " 6, 7, 8, 9"]
    with client(chat) as c:
        body = c.post("/v1/completions", json={"model": "fake", "prompt": "1, 2, 3, 4, 5,", "stop": [", 9"]}).json()
        with c.stream("POST", "/v1/completions", json={"model": "fake", "prompt": ["1, 2, 3, 4, 5,"],
                                                       "stream": True}) as r:
            payloads, _ = events(r)
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == " 6, 7, 8"
    assert "".join(p["choices"][0]["text"] for p in payloads) == " 6, 7, 8, 9"
    assert chat.calls[-1] == [Message("raw", "1, 2, 3, 4, 5,")] and chat.thinks_asked[-1] is False


def test_sampling_fields_reach_the_model(chat: FakeChat) -> None:
    with client(chat) as c:
        c.post("/v1/chat/completions", json={"model": "fake", "messages": USER, "temperature": 0, "top_p": 0.5,
                                             "top_k": 7, "min_p": 0.1, "seed": 11, "max_completion_tokens": 33})
        c.post("/v1/chat/completions", json={"model": "fake", "messages": USER})
    assert chat.samplings == [Sampling(0.0, 0.5, 7, 0.1, 11, 33), Sampling(max_tokens=512)]


def test_a_model_suffix_answers_by_search_and_streams_its_progress(chat: FakeChat, search: SearchRunner) -> None:
    with client(chat, search) as c:
        body = c.post("/v1/chat/completions", json={"model": "fake+astar", "messages": USER,
                                                      "search": {"candidates": 2, "scorer": "rules"}}).json()
        with c.stream("POST", "/v1/chat/completions", json={
                "model": "fake", "messages": USER, "stream": True,
                "search": {"strategy": "bon", "trajectories": 2, "scorer": "rules"}}) as r:
            payloads, comments = events(r)
    assert body["choices"][0]["message"]["content"].endswith("\\boxed{42}.")
    assert body["search"]["strategy"] == "astar" and body["search"]["final_answer"] == "42"
    assert body["search"]["expansions"] == 3 and chat.calls == []  # the chat model was not used
    assert comments and all(c.startswith("bon: sample call") or c == "ping" for c in comments)
    assert payloads[-1]["search"]["strategy"] == "bon"
    assert "boxed" in "".join(p["choices"][0]["delta"].get("content", "") for p in payloads)


def test_a_search_is_stopped_when_its_caller_is_gone(chat: FakeChat, search: SearchRunner) -> None:
    service = ReplyService(chat, "fake", search=search)
    from qwq_local.app.reply import SearchChoice

    request = ReplyRequest((Message("user", "What is 6 times 7?"),), Sampling(), search=SearchChoice("astar"))
    seen: list[Any] = []
    with pytest.raises(Cancelled):
        service.reply(request, seen.append, cancelled=lambda: len(seen) >= 1)
    assert len(seen) == 1  # one sample call reported, the next one refused


def test_a_cancelled_reply_stops_between_tokens(chat: FakeChat) -> None:
    chat.replies = [LONG_THINKING]
    service = ReplyService(chat, "fake")
    seen: list[Any] = []
    with pytest.raises(Cancelled) as info:
        service.reply(ReplyRequest((Message("user", "hi"),), Sampling()), seen.append,
                      cancelled=lambda: len(seen) >= 3)
    assert chat.closed == 1 and len(seen) == 3 and all(isinstance(e, Delta) for e in seen)
    assert 0 < info.value.tokens < 10


MALFORMED: list[tuple[str, Any, int]] = [
    ("not json", b"{", 400),
    ("json array", [1, 2], 400),
    ("no model", {"messages": USER}, 400),
    ("model not a string", {"model": 3, "messages": USER}, 400),
    ("unknown model", {"model": "gpt-4", "messages": USER}, 404),
    ("unknown strategy suffix", {"model": "fake+dfs", "messages": USER}, 404),
    ("no messages", {"model": "fake"}, 400),
    ("empty messages", {"model": "fake", "messages": []}, 400),
    ("message not an object", {"model": "fake", "messages": ["hi"]}, 400),
    ("bad role", {"model": "fake", "messages": [{"role": "robot", "content": "hi"}]}, 400),
    ("content a number", {"model": "fake", "messages": [{"role": "user", "content": 5}]}, 400),
    ("image part", {"model": "fake", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
    ("temperature a string", {"model": "fake", "messages": USER, "temperature": "hot"}, 400),
    ("temperature too high", {"model": "fake", "messages": USER, "temperature": 9}, 400),
    ("top_p zero", {"model": "fake", "messages": USER, "top_p": 0}, 400),
    ("max_tokens huge", {"model": "fake", "messages": USER, "max_tokens": 10**9}, 400),
    ("max_tokens zero", {"model": "fake", "messages": USER, "max_tokens": 0}, 400),
    ("max_tokens a float", {"model": "fake", "messages": USER, "max_tokens": 2.5}, 400),
    ("stop a number", {"model": "fake", "messages": USER, "stop": 7}, 400),
    ("five stops", {"model": "fake", "messages": USER, "stop": list("abcde")}, 400),
    ("n two", {"model": "fake", "messages": USER, "n": 2}, 400),
    ("stream a string", {"model": "fake", "messages": USER, "stream": "yes"}, 400),
    ("bad effort", {"model": "fake", "messages": USER, "reasoning_effort": "max"}, 400),
    ("budget negative", {"model": "fake", "messages": USER, "thinking_budget": -1}, 400),
    ("search unknown field", {"model": "fake", "messages": USER, "search": {"strategy": "astar", "k": 2}}, 400),
    ("search bad strategy", {"model": "fake", "messages": USER, "search": {"strategy": "dfs"}}, 400),
    ("search candidates zero", {"model": "fake", "messages": USER, "search": {"strategy": "astar",
                                                                               "candidates": 0}}, 400),
    ("search of a completion", {"model": "fake+astar", "prompt": "x"}, 400),
    ("search candidates over the limit", {"model": "fake", "messages": USER, "search": {"strategy": "astar",
                                                                                         "candidates": 100000}}, 400),
    ("search trajectories over the limit", {"model": "fake+bon", "messages": USER,
                                            "search": {"trajectories": 10**6}}, 400),
    # Asked of the reply and not given: refused, never dropped (an agent would take prose for a final answer).
    ("tools", {"model": "fake", "messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}],
               "tool_choice": "required"}, 400),
    ("json schema", {"model": "fake", "messages": USER,
                     "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, 400),
    ("logprobs", {"model": "fake", "messages": USER, "logprobs": True, "top_logprobs": 2}, 400),
    ("logit_bias", {"model": "fake", "messages": USER, "logit_bias": {"42": -100}}, 400),
    ("frequency_penalty", {"model": "fake", "messages": USER, "frequency_penalty": 0.5}, 400),
    ("stream_options without stream", {"model": "fake", "messages": USER, "stream_options": {"include_usage": True}},
     400),
    ("completion logprobs over the limit", {"model": "fake", "prompt": "x", "logprobs": 21}, 400),
    ("completion logprobs not a number", {"model": "fake", "prompt": "x", "logprobs": True}, 400),
    # What the search service would refuse is refused before a stream's 200.
    ("search scorer unknown, streamed", {"model": "fake+astar", "messages": USER, "stream": True,
                                         "search": {"scorer": "nope"}}, 400),
    ("search scorer for sc", {"model": "fake+sc", "messages": USER, "search": {"scorer": "rules"}}, 400),
    ("search after the assistant", {"model": "fake+astar", "stream": True,
                                    "messages": [*USER, {"role": "assistant", "content": "42"}]}, 400),
]


@pytest.mark.parametrize("name, body, status", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_request_gets_an_openai_error_and_the_server_stays_up(
        chat: FakeChat, name: str, body: Any, status: int) -> None:
    path = "/v1/completions" if isinstance(body, dict) and "prompt" in body else "/v1/chat/completions"
    with client(chat) as c:
        r = c.post(path, content=body) if isinstance(body, bytes) else c.post(path, json=body)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert c.post("/v1/chat/completions", json={"model": "fake", "messages": USER}).status_code == 200
    assert len(chat.calls) == 1  # nothing malformed reached the model


def test_what_clients_send_by_default_is_accepted(chat: FakeChat) -> None:
    defaults = {"model": "fake", "messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": "none", "response_format": {"type": "text"}, "logprobs": False, "frequency_penalty": 0,
                "logit_bias": {}, "top_k": -1, "reasoning_effort": "minimal"}
    with client(chat) as c:
        r = c.post("/v1/chat/completions", json=defaults)
        assert r.status_code == 200, r.text
    assert chat.samplings[-1].top_k == 0  # -1 is "off" to llama.cpp and vLLM; 0 is off here


def test_a_model_suffix_and_a_search_body_start_from_the_same_defaults() -> None:
    from qwq_local.serve.api import Limits, parse_chat

    limits = Limits("fake", 4096, Sampling())
    by_id = parse_chat({"model": "fake+astar", "messages": USER}, limits).request.search
    by_body = parse_chat({"model": "fake", "messages": USER, "search": {"strategy": "astar"}}, limits).request.search
    nulls = parse_chat({"model": "fake+astar", "messages": USER,
                        "search": {"max_expansions": None, "time_limit": None}}, limits).request.search
    assert by_id is not None and by_id == by_body == nulls
    assert by_id.config.time_limit is not None and by_id.config.max_expansions is not None  # null: the default
    assert (by_id.config.choose, by_id.config.completions) == ("value", 2)  # the measured A*, as `/search astar`


def test_a_stream_is_framed_as_vllms_and_the_routes_answer_without_v1(chat: FakeChat) -> None:
    with client(chat) as c:
        with c.stream("POST", "/chat/completions", json={"model": "fake", "messages": USER, "stream": True}) as r:
            raw = r.read()
        assert c.get("/models").json()["data"][0]["id"] == "fake"
    assert b"\r" not in raw and raw.startswith(b"data: {") and raw.endswith(b"data: [DONE]\n\n")
    assert b"\"finish_reason\": \"stop\"" in raw


def test_health_answers_without_a_key_and_busy_gets_retry_after(chat: FakeChat) -> None:
    from starlette.requests import Request

    from qwq_local.serve.api import ApiError
    from qwq_local.serve.app import _error

    with client(chat, api_key=KEY) as c:
        r = c.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert c.get("/v1/models").status_code == 401
    busy = _error(Request({"type": "http", "state": {}}), ApiError(429, "busy", code="queue_full"))
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"


def test_an_api_key_is_required_when_set(chat: FakeChat) -> None:
    with client(chat, api_key=KEY) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong-key-123"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": KEY}).status_code == 401
        r = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert chat.calls == []


def test_bodies_routes_and_methods_out_of_bounds(chat: FakeChat) -> None:
    with client(chat, max_body_bytes=2048) as c:
        big = {"model": "fake", "messages": [{"role": "user", "content": "x" * 4096}]}
        r = c.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert c.get("/v1/nothing").status_code == 404 and c.get("/v1/nothing").json()["error"]
        assert c.get("/v1/chat/completions").status_code == 405
        assert c.post("/v1/chat/completions", json={"model": "fake", "messages": USER}).status_code == 200


def test_cors_is_off_unless_an_origin_is_given(chat: FakeChat) -> None:
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    with client(chat) as c:
        assert "access-control-allow-origin" not in c.options("/v1/chat/completions", headers=preflight).headers
    with client(chat, cors=("http://localhost:3000",)) as c:
        r = c.options("/v1/chat/completions", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        sdk = {**preflight, "Access-Control-Request-Headers": "authorization,content-type,x-stainless-lang"}
        r = c.options("/v1/chat/completions", headers=sdk)  # the openai SDKs' own headers
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_a_full_queue_gets_429_and_a_stopping_server_503(chat: FakeChat) -> None:
    import asyncio

    from qwq_local.serve.api import ApiError
    from qwq_local.serve.queue import GenerationQueue

    async def scenario() -> list[int]:
        queue = GenerationQueue(limit=1)
        await queue.start()
        statuses = []
        release = asyncio.Event()
        loop = asyncio.get_running_loop()

        def slow(cancelled: Any) -> str:
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
            return "done"

        first = queue.submit(slow)
        await asyncio.sleep(0.05)  # running now
        second = queue.submit(lambda cancelled: "second")
        try:
            queue.submit(lambda cancelled: "third")
        except ApiError as exc:
            statuses.append(exc.status)
        release.set()
        assert await first.future == "done" and await second.future == "second"
        await queue.close()
        try:
            queue.submit(lambda cancelled: "late")
        except ApiError as exc:
            statuses.append(exc.status)
        return statuses

    assert asyncio.run(scenario()) == [429, 503]


def test_options_refuse_an_open_address_without_a_key() -> None:
    from qwq_local.errors import UsageError

    with pytest.raises(UsageError, match="--api-key"):
        ServeOptions(host="0.0.0.0").check()
    assert ServeOptions(host="0.0.0.0", api_key=KEY).check().host == "0.0.0.0"
    assert ServeOptions().check().host == "127.0.0.1"


def test_qwq_serve_refuses_an_open_address_without_a_key_before_loading(monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from qwq_local.cli import main

    monkeypatch.setattr(ReplyService, "load", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--host", "0.0.0.0", "--port", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --host 0.0.0.0 makes the server reachable from other machines: give --api-key KEY "
        "(or bind 127.0.0.1)")


class FailingChat(FakeChat):
    """A chat model whose generation fails as the engine's can: a prompt that fills the context, or a bug."""

    error: Exception = RuntimeError("boom")

    def stream(self, messages: Any, sampling: Any, **kwargs: Any) -> Iterator[str]:
        def fail() -> Iterator[str]:
            raise self.error
            yield ""

        return fail()


@pytest.mark.parametrize("error, status", [(None, 400), (RuntimeError("boom in the engine"), 500)])
def test_a_failing_generation_is_an_error_reply_streamed_or_not(error: Exception | None, status: int,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from qwq_local.engine.chat import ContextFullError

    chat = FailingChat(name="fake")
    chat.error = error or ContextFullError("the conversation (5,000 tokens) fills the context (4,096)")
    with client(chat) as c:
        r = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER})
        assert r.status_code == status and "Traceback" not in r.text
        assert ("fills the context" in r.json()["error"]["message"]) == (status == 400)
        with c.stream("POST", "/v1/chat/completions", json={"model": "fake", "messages": USER, "stream": True}) as s:
            payloads, _ = events(s)
        assert payloads[-1]["error"]["type"] == ("invalid_request_error" if status == 400 else "server_error")
        assert c.get("/v1/models").status_code == 200


def test_qwq_serve_on_a_port_in_use_says_so_before_loading(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from qwq_local.cli import main

    monkeypatch.setattr(ReplyService, "load", lambda *a: pytest.fail("the model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "--port", str(port)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use")


def test_a_text_completion_gives_its_tokens_log_probs_through_the_token_that_reaches_the_stop(chat: FakeChat) -> None:
    """What a search on `--engine` at qwq serve needs (the confidence scorer, a stop told from the end): the
    completions API's log-probs, run on through the stop sequence's first token as llama.cpp's servers give them,
    and vLLM's stop_reason."""
    chat.replies = ["Two plus two is four.\n\nSo four.", "Two plus two is four.\n\nSo four."]
    body = {"model": "fake", "prompt": "Q: 2+2?\nA:", "stop": ["\n\n"], "logprobs": 2}
    with client(chat) as c:
        whole = c.post("/v1/completions", json=body).json()["choices"][0]
        events = [json.loads(line[len("data: "):]) for line in c.post(
            "/v1/completions", json={**body, "stream": True}).text.splitlines()
            if line.startswith("data: {")]
    assert whole["text"] == "Two plus two is four." and whole["finish_reason"] == "stop"
    assert whole["stop_reason"] == "\n\n"
    logprobs = whole["logprobs"]
    assert "".join(logprobs["tokens"]) == "Two plus two is four.\n\n"  # the stop's token too
    assert logprobs["token_logprobs"] == [-0.5] * len(logprobs["tokens"])
    assert logprobs["top_logprobs"][0] == {"Two": -0.5, " alt": -1.5}
    assert logprobs["text_offset"][:3] == [0, 3, 4]
    streamed = [e["choices"][0] for e in events]
    assert "".join(c["text"] for c in streamed) == whole["text"]
    tokens = [t for c in streamed if c["logprobs"] for t in c["logprobs"]["tokens"]]
    offsets = [t for c in streamed if c["logprobs"] for t in c["logprobs"]["text_offset"]]
    assert tokens == logprobs["tokens"] and offsets == logprobs["text_offset"]
    assert (streamed[-1]["finish_reason"], streamed[-1]["stop_reason"]) == ("stop", "\n\n")


def test_a_text_completion_that_ends_at_the_models_end_says_no_stop_reason(chat: FakeChat) -> None:
    chat.replies = ["Four."]
    with client(chat) as c:
        choice = c.post("/v1/completions", json={"model": "fake", "prompt": "2+2=", "logprobs": 0,
                                                 "stop": ["\n\n"]}).json()["choices"][0]
        plain = c.post("/v1/completions", json={"model": "fake", "prompt": "2+2="}).json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] is None
    assert choice["logprobs"]["tokens"] == ["Four", "."]
    assert choice["logprobs"]["top_logprobs"] == [{"Four": -0.5}, {".": -0.5}]  # logprobs 0: the token, as vLLM
    assert plain["logprobs"] is None


def test_streamed_text_offsets_count_the_tokens_a_stop_held_back(chat: FakeChat) -> None:
    """A stop sequence that starts inside a token holds that token back while its first characters stream: the
    next chunk's offsets start where that token does (they started where the streamed text ended)."""
    chat.replies = ["Hello. Bye", "Hello. Bye"]
    body = {"model": "fake", "prompt": "Say:", "stop": ["o."], "logprobs": 1}
    with client(chat) as c:
        whole = c.post("/v1/completions", json=body).json()["choices"][0]
        events = [json.loads(line[len("data: "):]) for line in c.post(
            "/v1/completions", json={**body, "stream": True}).text.splitlines() if line.startswith("data: {")]
    assert whole["text"] == "Hell" and whole["logprobs"]["tokens"] == ["Hello", "."]
    assert whole["logprobs"]["text_offset"] == [0, 5]
    offsets = [t for e in events if e["choices"] and e["choices"][0]["logprobs"]
               for t in e["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == [0, 5]
