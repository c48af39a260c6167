"""Presence and repetition penalties reach every path: the KV-tree search policy (real model), the remote engines'
requests and `qwq serve`'s requests."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from qwq_local.config import Sampling
from qwq_local.dialog.messages import Message
from qwq_local.search.protocol import StepStop
from tests.fake_chat import FakeChat
from tests.fakes import ChatMLFormat

WHOLE = StepStop(delimiter=None, max_tokens=40)


def _greedy_reply(model_path: Path, sampling: Sampling) -> str:
    from qwq_local.engine.kvtree import KVTree
    from qwq_local.engine.model import LoadedModel, LoadOptions
    from qwq_local.engine.policy import TreePolicy

    model = LoadedModel(model_path, LoadOptions(n_ctx=512))
    try:
        with KVTree(model, n_ctx=512, n_seq_max=4) as tree:
            policy = TreePolicy(model, tree, sampling, thinks=False)
            root = policy.open("Write the word apple twenty times, separated by spaces.")
            [candidate] = policy.sample(root, 1, WHOLE)
            policy.close()
            return candidate.text
    finally:
        model.close()


def test_the_search_policy_applies_the_repetition_penalty(qwen_path: Path) -> None:
    plain = _greedy_reply(qwen_path, Sampling(temperature=0, max_tokens=40))
    penalised = _greedy_reply(qwen_path, Sampling(temperature=0, max_tokens=40, repeat_penalty=1.8,
                                                  presence_penalty=1.5))
    assert plain.lower().count("apple") >= 8  # greedy, it does as asked
    assert penalised != plain and penalised.lower().count("apple") < plain.lower().count("apple")


def test_remote_chat_and_search_requests_carry_the_penalties() -> None:
    from qwq_local.engine.remote_chat import RemoteChat
    from qwq_local.engine.remote_client import CompletionServer

    bodies: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        event = {"choices": [{"text": "4", "index": 0, "finish_reason": "stop"}]}
        return httpx.Response(200, text=f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n",
                              headers={"content-type": "text/event-stream"})

    remote = CompletionServer("http://engine.test", transport=httpx.MockTransport(handle))
    chat = RemoteChat(remote, ChatMLFormat(), name="scripted", n_ctx=4096, think=False)
    "".join(chat.stream([Message("user", "2+2?")], Sampling(presence_penalty=1.2, repeat_penalty=1.1)))
    assert bodies[0]["presence_penalty"] == 1.2 and bodies[0]["repeat_penalty"] == 1.1


def test_serve_passes_the_penalties_and_refuses_a_negative_presence_penalty() -> None:
    from tests.test_serve import USER, client

    chat = FakeChat(replies=["a", "b"])
    with client(chat) as c:
        ok = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER, "presence_penalty": 1.5,
                                                  "repeat_penalty": 1.1})
        bad = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER, "presence_penalty": -1})
    assert ok.status_code == 200 and bad.status_code == 400 and "presence_penalty" in bad.text
    assert (chat.samplings[0].presence_penalty, chat.samplings[0].repeat_penalty) == (1.5, 1.1)
    assert len(chat.samplings) == 1


@pytest.mark.parametrize("value", [0.0, 3])
def test_serve_presence_penalty_bounds(value: float) -> None:
    from tests.test_serve import USER, client

    chat = FakeChat(replies=["a"])
    with client(chat) as c:
        status = c.post("/v1/chat/completions", json={"model": "fake", "messages": USER,
                                                      "presence_penalty": value}).status_code
    assert status == (200 if value == 0.0 else 400)


def test_the_remote_search_policy_sends_the_penalties() -> None:
    from qwq_local.engine.remote import RemotePolicy
    from qwq_local.engine.remote_client import CompletionServer
    from tests.fakes import ScriptedEngine, choice

    engine = ScriptedEngine([[choice(["one", " two", " three", " four", "\n\n"], stop="\n\n")]])
    server = CompletionServer("http://engine.test/v1", transport=engine.transport())
    lm = RemotePolicy(server, ChatMLFormat(), Sampling(seed=3, max_tokens=100, presence_penalty=0.7,
                                                       repeat_penalty=1.05), thinks=False, model="scripted")
    lm.sample(lm.open("q"), 1, StepStop(delimiter="\n\n", min_tokens=4, max_tokens=64))
    assert (engine.requests[0]["presence_penalty"], engine.requests[0]["repeat_penalty"]) == (0.7, 1.05)
