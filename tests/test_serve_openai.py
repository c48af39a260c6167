"""`qwq serve` for real: the official `openai` client against the server the test starts on the tiny model."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.model, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-qwq-test-key-0123"
MODEL = "smollm2-135m"
STORY = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]


class Server:
    """A `qwq serve` child process on a free loopback port, and its log."""

    def __init__(self, models_dir: Path, log: Path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT), "QWQ_USER_PATH": str(log.parent)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qwq_local", "serve", "--models-dir", str(models_dir), "-m", MODEL,
             "--port", str(self.port), "--ctx", "2048", "--api-key", KEY, *extra],
            stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env, cwd=ROOT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"qwq serve exited:\n{log.read_text()}"
            try:
                if httpx.get(f"{self.url}/models", headers=self.auth, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"qwq serve did not answer in time:\n{log.read_text()}")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY}"}

    def client(self, key: str = KEY) -> Any:
        return openai.OpenAI(base_url=self.url, api_key=key, timeout=300, max_retries=0)

    def wait_for_log(self, pattern: str, seconds: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log.read_text())
            if found:
                return found
            time.sleep(0.2)
        pytest.fail(f"no {pattern!r} in the server log:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                return self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail("qwq serve did not stop on Ctrl-C within 30 s")
        return self.process.returncode


@pytest.fixture(scope="module")
def server(smollm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(smollm_path.parent.parent, tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        yield running
    finally:
        assert running.stop() == 0, running.log.read_text()


def chat(server: Server, messages: list[dict[str, Any]] = STORY, **kwargs: Any) -> Any:
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 60)
    return server.client().chat.completions.create(model=kwargs.pop("model", MODEL), messages=messages, **kwargs)


def settled(server: Server, messages: list[dict[str, Any]] = STORY, **kwargs: Any) -> Any:
    """The reply to a request sent twice: the second one evaluates only the prompt's last token, as every repeat
    of it will (llama.cpp's logits can differ by batch shape, so a fresh prompt may decode differently)."""
    chat(server, messages, **kwargs)
    return chat(server, messages, **kwargs)


def test_models_and_the_api_key(server: Server) -> None:
    ids = [m.id for m in server.client().models.list()]
    assert ids == [MODEL, f"{MODEL}+astar", f"{MODEL}+beam", f"{MODEL}+bon", f"{MODEL}+sc"]
    with pytest.raises(openai.AuthenticationError):
        server.client("sk-wrong-key-000").models.list()


def test_reasoning_content_is_separated_streamed_and_not(server: Server) -> None:
    reply = chat(server, extra_body={"thinking_budget": 16})
    message = reply.choices[0].message
    assert message.reasoning_content.endswith("give the final answer.")  # the budget closed a forced <think>
    assert message.content and "think>" not in message.content + message.reasoning_content
    assert reply.usage.completion_tokens_details.reasoning_tokens > 16
    reply = chat(server, extra_body={"thinking_budget": 16})  # the same cache state as the stream below
    message = reply.choices[0].message
    stream = chat(server, extra_body={"thinking_budget": 16}, stream=True, stream_options={"include_usage": True})
    reasoning, content, kinds, usage = [], [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if getattr(delta, "reasoning_content", None):
                reasoning.append(delta.reasoning_content)
                kinds.append("r")
            if delta.content:
                content.append(delta.content)
                kinds.append("c")
    assert kinds == sorted(kinds, reverse=True) and "c" in kinds and "r" in kinds  # all thinking, then answer
    assert "".join(reasoning).strip() == message.reasoning_content
    assert "".join(content).strip() == message.content
    assert usage is not None and usage.completion_tokens_details.reasoning_tokens == \
        reply.usage.completion_tokens_details.reasoning_tokens


def test_the_thinking_budget_is_honoured(server: Server) -> None:
    """The forced closing text is the same both times, so the thinking grows by exactly the budget's difference."""
    short = chat(server, max_tokens=100, extra_body={"thinking_budget": 16})
    longer = chat(server, max_tokens=100, extra_body={"thinking_budget": 40})
    r16 = short.usage.completion_tokens_details.reasoning_tokens
    r40 = longer.usage.completion_tokens_details.reasoning_tokens
    assert r40 - r16 == 24
    assert short.choices[0].message.content and longer.choices[0].message.content


def test_stop_sequences(server: Server) -> None:
    question = [{"role": "user", "content": "Name three colours of the rainbow."}]
    full = settled(server, question, max_tokens=40).choices[0].message.content
    words = re.findall(r"[A-Za-z]{4,}", full)
    assert len(words) >= 4, full
    word = words[len(words) // 2]
    stopped = chat(server, question, max_tokens=40, stop=[word, "#never#"])
    assert stopped.choices[0].message.content == full[: full.index(word)].rstrip()
    assert stopped.choices[0].finish_reason == "stop"


def test_a_text_completions_log_probs_through_the_sdk_streamed_and_not(server: Server) -> None:
    """The openai SDK reads the completions API's log-probs; greedy, each token is the likeliest of its top list."""
    client = server.client()
    asked = dict(model=MODEL, prompt="The three primary colours are", max_tokens=12, temperature=0, logprobs=3)
    whole = client.completions.create(**asked).choices[0]
    logprobs = whole.logprobs
    assert logprobs is not None and "".join(logprobs.tokens) == whole.text and len(logprobs.tokens) == 12
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert len(top) <= 3 and max(top.values()) == pytest.approx(logprob, abs=1e-4) and logprob <= 0
    streamed = [c.choices[0] for c in client.completions.create(**asked, stream=True) if c.choices]
    assert [t for c in streamed if c.logprobs for t in c.logprobs.tokens] == logprobs.tokens
    assert [o for c in streamed if c.logprobs for o in c.logprobs.text_offset] == logprobs.text_offset


def test_a_seed_reproduces_a_sampled_reply(server: Server) -> None:
    def sampled(seed: int) -> str:
        return chat(server, max_tokens=24, temperature=1.0, top_p=1.0, seed=seed).choices[0].message.content

    sampled(1234)
    first = sampled(1234)
    assert sampled(1234) == first
    assert len({first, sampled(1), sampled(2)}) > 1


def test_a_second_turn_reuses_the_cached_prefix(server: Server) -> None:
    first_turn = [{"role": "user", "content": "Tell me a fact about owls."}]
    first = chat(server, first_turn, max_tokens=20)
    history = first_turn + [{"role": "assistant", "content": first.choices[0].message.content},
                            {"role": "user", "content": "And one about cats?"}]
    second = chat(server, history, max_tokens=20)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


def test_an_astar_model_id_answers_by_search(server: Server) -> None:
    search = {"candidates": 2, "max_expansions": 2, "scorer": "rules"}
    reply = chat(server, [{"role": "user", "content": "What is 2 + 3?"}], model=f"{MODEL}+astar", max_tokens=40,
                 temperature=0.7, extra_body={"search": search})
    assert reply.choices[0].message.content
    assert reply.model_extra["search"]["strategy"] == "astar"
    assert 1 <= reply.model_extra["search"]["expansions"] <= 2
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_tokens": 40,
            "stream": True, "search": {"strategy": "astar", **search}}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, headers=server.auth, timeout=300) as r:
        lines = list(r.iter_lines())
    assert any(line.startswith(": astar: sample call 1") for line in lines)  # progress while it searches
    assert lines[-1] == "data: [DONE]" or "data: [DONE]" in lines


def test_eight_clients_at_once_each_get_their_own_answer(server: Server) -> None:
    words = ["violet", "copper", "harbor", "meadow", "lantern", "pebble", "thunder", "orchid"]

    def ask(i: int) -> tuple[str, str]:
        messages = [{"role": "user", "content": f"Repeat this word three times: {words[i]}"}]
        if i % 2:
            stream = chat(server, messages, max_tokens=16, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices), words[i]
        return chat(server, messages, max_tokens=16).choices[0].message.content, words[i]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    for answer, word in answers:
        assert word in answer.lower(), answers
        assert not any(other in answer.lower() for other in words if other != word), answers


def test_a_client_that_goes_away_frees_its_slot(server: Server) -> None:
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/completions", json=body, headers=server.auth, timeout=300) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 5:
                break
    after = chat(server, [{"role": "user", "content": "Say hi."}], max_tokens=8)
    assert after.choices[0].message.content
    found = server.wait_for_log(r"/v1/completions stopped: the client went away \(cancelled after (\d+) tokens\)")
    assert 4 <= int(found.group(1)) < 1500



def test_a_client_that_stops_waiting_for_a_whole_reply_cancels_it(server: Server) -> None:
    body = {"model": MODEL, "prompt": "10, 20, 30, 40,", "max_tokens": 1500, "temperature": 0}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/completions", json=body, headers=server.auth, timeout=2)
    found = server.wait_for_log(r"POST /v1/completions 499 .*cancelled after (\d+) tokens")
    assert int(found.group(1)) < 1500
    assert chat(server, [{"role": "user", "content": "Say hi."}], max_tokens=4).choices[0].message.content


MALFORMED: list[tuple[str, dict[str, str], Any, int]] = [
    ("/chat/completions", {}, {"model": MODEL, "messages": STORY}, 401),  # no key
    ("/models", {"Authorization": "Bearer nope-nope-nope"}, None, 401),
    ("/chat/completions", {}, b"{not json", 400),
    ("/chat/completions", {}, b"", 400),
    ("/chat/completions", {}, [1, 2, 3], 400),
    ("/chat/completions", {}, {"messages": STORY}, 400),
    ("/chat/completions", {}, {"model": "gpt-4o", "messages": STORY}, 404),
    ("/chat/completions", {}, {"model": f"{MODEL}+dfs", "messages": STORY}, 404),
    ("/chat/completions", {}, {"model": MODEL}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": "hello"}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": [{"role": "user", "content": None}]}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": STORY, "max_tokens": 10**12}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": STORY, "max_tokens": "many"}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": STORY, "temperature": -1}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": STORY, "top_k": -5}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": STORY, "seed": "abc"}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": STORY, "stop": {"a": 1}}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": STORY, "n": 3}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": STORY, "thinking_budget": 0}, 400),
    ("/chat/completions", {}, {"model": MODEL, "messages": STORY, "search": {"strategy": "astar", "beam": "x"}},
     400),
    ("/chat/completions", {}, {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}, 413),
    ("/completions", {}, {"model": MODEL, "prompt": 42}, 400),
    ("/embeddings", {}, {"model": MODEL, "input": "hi"}, 404),
    ("/chat/completions", {"method": "GET"}, None, 405),
]


def test_twenty_five_malformed_requests_each_get_their_status_and_the_server_stays_up(server: Server) -> None:
    assert len(MALFORMED) == 25
    got = []
    with httpx.Client(timeout=60) as http:
        for path, headers, body, status in MALFORMED:
            method = headers.pop("method", "POST") if "method" in headers else ("GET" if body is None else "POST")
            sent = {**server.auth, **headers}
            if status == 401 and not headers:
                sent = {}
            content = body if isinstance(body, bytes) else (json.dumps(body) if body is not None else None)
            r = http.request(method, f"{server.url}{path}", content=content, headers={
                **sent, "Content-Type": "application/json"})
            error = r.json()["error"]
            assert error["message"] and set(error) == {"message", "type", "param", "code"}
            got.append(r.status_code)
    assert got == [m[3] for m in MALFORMED]
    assert server.process.poll() is None
    assert chat(server, [{"role": "user", "content": "Say hi."}], max_tokens=4).choices[0].message.content
    assert "Traceback" not in server.log.read_text()


def test_ctrl_c_stops_the_server_with_a_reply_in_flight(smollm_path: Path, tmp_path: Path) -> None:
    running = Server(smollm_path.parent.parent, tmp_path / "serve.log")
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5,", "max_tokens": 1500, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{running.url}/completions", json=body, headers=running.auth, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
        assert running.stop() == 0
    log = running.log.read_text()
    assert "qwq serve: stopped" in log and "Traceback" not in log


def test_bench_serve_reports_the_server_beside_the_model_driven_directly(smollm_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "qwq_local", "bench", "serve", "--models-dir",
                          str(smollm_path.parent.parent), "-m", MODEL, "--clients", "1,3", "--requests", "3",
                          "--max-tokens", "6", "--json"], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["rows"]
    assert [row["clients"] for row in rows] == [1, 3]
    for row in rows:
        for side in ("server", "direct"):
            assert row[side]["requests"] == 3 and 0 < row[side]["tokens"] <= 18
            assert row[side]["tokens_per_second"] > 0 and row[side]["requests_per_minute"] > 0
        assert row["ratio"] == pytest.approx(row["server"]["tokens_per_second"] / row["direct"]["tokens_per_second"],
                                             rel=0.01)
