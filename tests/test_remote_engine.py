"""The remote engine on a scripted OpenAI-compatible server: retries, errors, n > 1 fallback, steps through `stop`."""

from __future__ import annotations

import math
import socket
import threading
import time
from pathlib import Path

import pytest

from fakes import ChatMLFormat, ScriptedEngine, choice, write_tiny_gguf
from qwq_local.config import Sampling
from qwq_local.engine.remote import RemotePolicy
from qwq_local.engine.remote_client import CompletionServer, Retry
from qwq_local.errors import EngineReplyError, EngineUnreachableError, ExitCode
from qwq_local.search.protocol import StepStop

STOP = StepStop(delimiter="\n\n", min_tokens=4, max_tokens=64)


def server(engine: ScriptedEngine, waits: list[float] | None = None, **kwargs) -> CompletionServer:
    sleep = (waits.append if waits is not None else (lambda s: None))
    return CompletionServer("http://engine.test/v1", transport=engine.transport(),
                            retry=Retry(attempts=4, sleep=sleep), **kwargs)


def policy(engine: ScriptedEngine, *, thinks: bool = False, **kwargs) -> RemotePolicy:
    return RemotePolicy(server(engine), ChatMLFormat(), Sampling(temperature=0.7, seed=3, max_tokens=100),
                        thinks=thinks, model="scripted", **kwargs)


WORDS = ["one", " two", " three", " four", "\n\n"]


def test_refusals_are_retried_with_back_off() -> None:
    engine = ScriptedEngine([503, 429, [choice(WORDS, stop="\n\n")]])
    waits: list[float] = []
    reply = server(engine, waits).complete({"prompt": "x"})
    assert reply.choices[0].text == "one two three four"
    assert len(engine.requests) == 3 and waits == [0.5, 1.0]


def test_refused_every_time_is_one_line_and_its_exit_code() -> None:
    engine = ScriptedEngine(default=503)
    with pytest.raises(EngineUnreachableError) as err:
        server(engine).complete({"prompt": "x"})
    assert err.value.exit_code == ExitCode.ENGINE_UNREACHABLE
    assert "kept refusing" in err.value.message and "\n" not in err.value.message
    assert len(engine.requests) == 4


@pytest.mark.parametrize("reply", [(200, "<html>busy</html>"), (200, '{"id": 1}'), (200, '{"choices": [{"x": 1}]}'),
                                   (404, "no such route")])
def test_nonsense_is_one_line_and_its_exit_code(reply: tuple[int, str]) -> None:
    with pytest.raises(EngineReplyError) as err:
        server(ScriptedEngine([reply, reply])).complete({"prompt": "x"})  # streamed, then asked whole
    assert err.value.exit_code == ExitCode.ENGINE_BAD_REPLY and "\n" not in err.value.message


def test_nobody_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    waits: list[float] = []
    remote = CompletionServer(f"http://127.0.0.1:{port}", retry=Retry(attempts=3, sleep=waits.append))
    with pytest.raises(EngineUnreachableError, match="cannot reach"):
        remote.models()
    assert waits == [0.5, 1.0]


def test_a_stalled_server_times_out_instead_of_hanging() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    remote = CompletionServer(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
    start = time.monotonic()
    try:
        with pytest.raises(EngineUnreachableError, match="did not answer"):
            remote.complete({"prompt": "x"})
        assert time.monotonic() - start < 10
    finally:
        listener.close()
        for conn in held:
            conn.close()


CTRL_C_SCRIPT = """
import json, signal, socket, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a shell, even when this run inherited it ignored
sys.path.insert(0, sys.argv[1])
from fakes import ChatMLFormat
from qwq_local.config import Sampling
from qwq_local.engine.remote import RemotePolicy
from qwq_local.engine.remote_client import CompletionServer
from qwq_local.search.protocol import Interrupted, StepStop

WRITES = sys.argv[2] == "writes"  # each request is answered with the first words of a reply, then nothing more
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
held = []
def answer(conn, i):
    conn.recv(65536)
    chunk = {"choices": [{"index": 0, "text": f"reply {i} so", "finish_reason": None,
                          "logprobs": {"tokens": ["reply", f" {i}", " so"], "token_logprobs": [-0.1] * 3}}]}
    conn.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-type: text/event-stream\\r\\n\\r\\n")
    conn.sendall(f"data: {json.dumps(chunk)}\\n\\n".encode())
def hold():
    while True:
        held.append(listener.accept()[0])
        if WRITES:
            answer(held[-1], len(held))
        if len(held) == 3:
            print("asked", flush=True)
threading.Thread(target=hold, daemon=True).start()
server = CompletionServer(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=120)
lm = RemotePolicy(server, ChatMLFormat(), Sampling(), thinks=False)
lm.n_supported = False  # three requests at once, each on a thread of its own
try:
    lm.sample(lm.open("q"), 3, StepStop(delimiter="\\n\\n", min_tokens=1, max_tokens=32))
except Interrupted as stopped:
    print(json.dumps(sorted((c.text, c.n_tokens, c.finished) for c in stopped.candidates[0])), flush=True)
    raise
"""


def _ctrl_c_after_three_requests(tmp_path: Path, mode: str) -> tuple[int, str, str]:
    import signal
    import subprocess
    import sys

    script = tmp_path / "stalled.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(Path(__file__).parent), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "asked", proc.stderr
        time.sleep(0.5)  # the first words reach the client
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)  # the requests' own timeout is 120 s: nothing waited on them
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def test_ctrl_c_while_concurrent_requests_wait_on_a_stalled_engine_ends_at_once(tmp_path: Path) -> None:
    code, _, err = _ctrl_c_after_three_requests(tmp_path, "stalls")
    assert code != 0 and "Interrupted" in err


def test_ctrl_c_keeps_every_reply_as_far_as_the_engine_streamed_it(tmp_path: Path) -> None:
    """As the local engine does (a best-so-far answer of sc and best-of-N): the replies were lost."""
    import json

    code, out, err = _ctrl_c_after_three_requests(tmp_path, "writes")
    assert code != 0 and "Interrupted" in err
    replies = json.loads(out.splitlines()[-1])
    assert replies == [["reply 1 so", 3, False], ["reply 2 so", 3, False], ["reply 3 so", 3, False]]


def test_n_honoured_is_one_request() -> None:
    engine = ScriptedEngine([[choice(WORDS, stop="\n\n"), choice(["a", " b", " c", " d", "\n\n"], stop="\n\n")]])
    lm = policy(engine)
    steps = lm.sample(lm.open("q"), 2, STOP)
    assert [c.text for c in steps] == ["one two three four\n\n", "a b c d\n\n"]
    assert len(engine.requests) == 1 and engine.requests[0]["n"] == 2 and lm.n_supported


def test_n_ignored_falls_back_to_concurrent_requests() -> None:
    engine = ScriptedEngine(default=lambda body: [choice(WORDS, stop="\n\n")])
    lm = policy(engine)
    root = lm.open("q")
    first = lm.sample(root, 3, STOP)
    assert len(first) == 3 and lm.n_supported is False
    assert [r["n"] for r in engine.requests] == [3, 1, 1]
    assert len({r["seed"] for r in engine.requests}) == 3  # each sample its own draw
    lm.sample(first[0].branch, 2, STOP)
    assert [r["n"] for r in engine.requests[3:]] == [1, 1]
    assert engine.requests[3]["prompt"].endswith("<|im_start|>assistant\none two three four\n\n")


def test_n_refused_outright_falls_back() -> None:
    engine = ScriptedEngine([400], default=lambda body: [choice(WORDS, stop="\n\n")])
    lm = policy(engine)
    assert len(lm.sample(lm.open("q"), 2, STOP)) == 2 and lm.n_supported is False


def test_a_stop_before_the_minimum_step_length_continues_the_step() -> None:
    engine = ScriptedEngine([[choice(["Hi", "\n\n"], stop="\n\n")],
                             [choice(["more", " of", " it", "\n\n"], stop="\n\n")]])
    lm = policy(engine)
    [step] = lm.sample(lm.open("q"), 1, STOP)
    assert step.text == "Hi\n\nmore of it\n\n" and step.n_tokens == 6 and not step.finished
    assert engine.requests[1]["prompt"].endswith("assistant\nHi\n\n")
    assert engine.requests[1]["max_tokens"] == STOP.max_tokens - 2
    assert len(step.token_logprobs) == len(step.token_confidences) == 6


def test_eos_finishes_the_reply_and_a_stop_string_does_not() -> None:
    engine = ScriptedEngine([[choice(WORDS, stop="\n\n"), choice(["The", " end", " is", " here."])]])
    lm = policy(engine)
    cut, done = lm.sample(lm.open("q"), 2, STOP)
    assert not cut.finished and cut.text.endswith("\n\n")
    assert done.finished and done.text == "The end is here."


def test_a_step_ends_right_after_the_thinking_closes() -> None:
    engine = ScriptedEngine([[choice(["so", " it", " is", " 5", "</think>", "\n\n"], stop="\n\n")],
                             [choice(["\n\n", "It", " is", " 5."])]])
    lm = policy(engine, thinks=True)
    root = lm.open("q")
    assert engine.requests == []
    [step] = lm.sample(root, 1, STOP)
    assert step.text == "so it is 5</think>" and step.n_tokens == 5 and not step.finished
    [answer] = lm.sample(step.branch, 1, STOP)
    assert "stop" not in engine.requests[1]  # the answer runs to its end
    assert engine.requests[1]["prompt"].endswith("<|im_start|>assistant\n<think>\nso it is 5</think>")
    assert answer.finished and answer.text == "\n\nIt is 5."


def test_log_probs_and_token_confidences() -> None:
    top = [{"a": math.log(0.5), "b": math.log(0.25), "c": math.log(0.25)}] * 4
    engine = ScriptedEngine([[choice(["a", "a", "a", "a"], top=top, logprob=math.log(0.5))]])
    lm = policy(engine)
    [step] = lm.sample(lm.open("q"), 1, STOP)
    assert step.logprob == pytest.approx(4 * math.log(0.5))
    assert step.token_confidences == pytest.approx([-(math.log(0.5) + 2 * math.log(0.25)) / 3] * 4)


def test_yes_probability_from_the_first_token() -> None:
    engine = ScriptedEngine([[choice(["Yes"], top=[{"Yes": math.log(0.6), "No": math.log(0.2), "Maybe": -3.0}])],
                             [choice(["Yes"], top=[{"Yes": math.log(0.6), "Maybe": math.log(0.1)}])]])
    lm = policy(engine, thinks=True)
    assert lm.yes_probability("Is it?") == pytest.approx(0.75)
    assert lm.yes_probability("Is it?") == pytest.approx(6 / 7)  # No below the top-k: at most the least of them
    assert engine.requests[0]["max_tokens"] == 1 and engine.requests[0]["prompt"].endswith("<think>\n\n</think>\n\n")


def test_a_server_that_caps_log_probs_is_asked_for_fewer() -> None:
    engine = ScriptedEngine([(400, '{"error": {"message": "logprobs must be at most 5"}}'),
                             [choice(WORDS, stop="\n\n")]])
    lm = policy(engine)
    lm.sample(lm.open("q"), 1, STOP)
    assert [r["logprobs"] for r in engine.requests] == [20, 5] and lm.top_logprobs == 5


def test_the_reply_token_limit_finishes_it() -> None:
    engine = ScriptedEngine([[choice(["w"] * 10, finish="length")]])
    lm = RemotePolicy(server(engine), ChatMLFormat(), Sampling(max_tokens=10), thinks=False)
    [step] = lm.sample(lm.open("q"), 1, StepStop(delimiter=None, max_tokens=50))
    assert step.finished and engine.requests[0]["max_tokens"] == 10 and "stop" not in engine.requests[0]


def test_qhead_is_refused_on_a_remote_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qwq_local.cli import main

    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    problem = tmp_path / "p.md"
    problem.write_text("What is 2+3?")
    with pytest.raises(SystemExit) as exc:
        main(["solve", str(problem), "-m", str(model), "--engine", "http://127.0.0.1:9", "-s", "astar",
              "--scorer", "qhead"])
    err = capsys.readouterr().err
    assert exc.value.code == ExitCode.USAGE
    assert err.count("\n") == 1 and "self-eval, rules" in err and "hidden states" in err


def test_engine_settings_from_flags_environment_and_config(tmp_path: Path) -> None:
    from qwq_local.config import load_settings
    from qwq_local.errors import UsageError

    config = tmp_path / "config.toml"
    config.write_text('engine = "http://from-config:8000"\n')
    assert load_settings({}, env={}, config_file=config).engine == "http://from-config:8000"
    env = {"QWQ_ENGINE": "http://from-env:8000", "QWQ_API_KEY": "k", "QWQ_ENGINE_TIMEOUT": "30"}
    settings = load_settings({}, env=env, config_file=config)
    assert (settings.engine, settings.api_key, settings.engine_timeout) == ("http://from-env:8000", "k", 30.0)
    assert load_settings({"engine": "https://flag"}, env=env).engine == "https://flag"
    with pytest.raises(UsageError, match="URL"):
        load_settings({"engine": "gpu-box:8000"}, env={})


def test_the_api_key_is_sent_and_a_refusal_says_so() -> None:
    import httpx

    seen: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, json={"error": {"message": "bad key"}})

    remote = CompletionServer("http://engine.test", "sekrit", transport=httpx.MockTransport(handle))
    with pytest.raises(EngineReplyError, match="refused the API key"):
        remote.models()
    assert seen == ["Bearer sekrit"]


def test_chat_streams_and_a_forced_close_of_the_thinking_continues_in_a_new_request() -> None:
    import json

    import httpx

    from qwq_local.engine.remote_chat import RemoteChat
    from qwq_local.dialog.messages import Message

    bodies: list[dict] = []
    scripts = [["Let", " me", " think", " more", " and", " more"], ["\n\nIt", " is", " 4."]]

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        pieces = scripts[len(bodies) - 1]
        events = [{"choices": [{"text": p, "index": 0, "finish_reason": None}]} for p in pieces]
        events[-1]["choices"][0]["finish_reason"] = "stop"
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    remote = CompletionServer("http://engine.test", transport=httpx.MockTransport(handle))
    chat = RemoteChat(remote, ChatMLFormat(), name="scripted", n_ctx=4096, think=True)

    def budget(thinking: str, n: int) -> str | None:
        return "\n</think>\n\n" if n >= 3 and "</think>" not in thinking else None

    reply = "".join(chat.stream([Message("user", "2+2?")], Sampling(temperature=0, max_tokens=50), intervene=budget))
    assert reply == "<think>\nLet me think\n</think>\n\n\n\nIt is 4."
    assert bodies[0]["stream"] and bodies[1]["prompt"].endswith("<think>\nLet me think\n</think>\n\n")
    stats = chat.last_stats
    assert stats is not None and stats.answer_tokens == 3 and stats.stop_reason == "eos"


def test_log_probs_in_the_chat_form_are_read_too() -> None:
    from qwq_local.engine.remote_client import parse_completion

    entry = {"token": "Yes", "logprob": -0.1, "top_logprobs": [{"token": "Yes", "logprob": -0.1},
                                                               {"token": "No", "logprob": -2.4}]}
    data = {"choices": [{"text": "Yes", "finish_reason": "length", "logprobs": {"content": [entry]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1}, "timings": {"prompt_n": 2}}
    reply = parse_completion(data, "http://engine.test")
    [one] = reply.choices
    assert one.tokens == ["Yes"] and one.token_logprobs == [-0.1] and one.top_logprobs == [{"Yes": -0.1, "No": -2.4}]
    assert reply.usage.evaluated_prompt_tokens == 2


def test_an_end_token_in_the_log_probs_is_not_taken_for_the_stop_string() -> None:
    engine = ScriptedEngine([[dict(choice(["It", " is", " 5.", "<|im_end|>"], stop="<|im_end|>"), stop_reason=None),
                              dict(choice(["It", " is", " 5.", "\n\n"], stop="\n\n"), stop_reason="\n\n")]])
    lm = policy(engine)
    done, cut = lm.sample(lm.open("q"), 2, STOP)
    assert done.finished and done.text == "It is 5."
    assert not cut.finished and cut.text == "It is 5.\n\n"


class ChatMLVocab(ChatMLFormat):
    """ChatMLFormat that knows its end-of-generation token, as a GGUF's vocabulary does: id 2 (<|im_end|>)."""

    def is_eog(self, token: int) -> bool:
        return token == 2


@pytest.mark.parametrize("prompt_format", [ChatMLVocab(), ChatMLFormat()], ids=["gguf vocab", "no vocabulary"])
def test_llama_servers_stop_string_and_eos_are_told_apart(prompt_format: ChatMLFormat) -> None:
    from fakes import llama_server_choice

    # llama-server ends both with finish_reason "stop", no stop_reason, and cuts a stop string's tokens from the
    # log-probs while keeping an end token: "\n\n" here came inside the token ".\n\n", so "." is text without a token
    cut = llama_server_choice([(10, "So"), (11, " it"), (12, " is"), (14, " 5"), (13, ".\n\n")], stop="\n\n")
    eos = llama_server_choice([(10, "It"), (11, " is"), (12, " 5."), (2, "")])
    engine = ScriptedEngine([[cut, eos]])
    lm = RemotePolicy(server(engine), prompt_format, Sampling(), thinks=False)
    step, done = lm.sample(lm.open("q"), 2, STOP)
    assert not step.finished and step.text == "So it is 5.\n\n"  # it ended at the blank line: the path goes on
    assert done.finished and done.text == "It is 5."
    assert len(step.token_confidences) == len(done.token_confidences) == 4


def test_no_request_asks_past_the_servers_context() -> None:
    import httpx

    # vLLM says its context in /v1/models (max_model_len) and refuses prompt + max_tokens past it with a 400
    models = {"object": "list", "data": [{"id": "other", "max_model_len": 99}, {"id": "qwq", "max_model_len": 30}]}
    engine = ScriptedEngine([[choice(["a", " b", " c"], finish="length")]])

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=models) if request.url.path == "/v1/models" else engine.handle(request)

    server = CompletionServer("http://vllm.test", transport=httpx.MockTransport(handle))
    assert server.context_length("qwq") == 30 and CompletionServer(
        "http://none.test", transport=engine.transport()).context_length("qwq") is None
    lm = RemotePolicy(server, ChatMLFormat(), Sampling(max_tokens=1000), thinks=False, n_ctx=30)
    root = lm.open("q")  # ChatML's prompt: 3 words, so 27 tokens of room
    [step] = lm.sample(root, 1, StepStop(delimiter=None, min_tokens=1, max_tokens=1000))
    assert engine.requests[0]["max_tokens"] == 27
    full = lm.open_text(" ".join(["w"] * 30))
    [none] = lm.sample(full, 1, STOP)
    assert none.finished and none.text == "" and len(engine.requests) == 1  # nothing asked: the context is full


def test_a_ggufs_vocabulary_knows_its_end_tokens(smollm_path: Path) -> None:
    from qwq_local.engine.vocab import GGUFVocab

    with GGUFVocab(smollm_path) as vocab:
        end = vocab.tokenize(vocab.eos_text, bos=False)
        assert len(end) == 1 and vocab.is_eog(end[0])
        assert not any(vocab.is_eog(t) for t in vocab.tokenize("The answer is 42.\n\n", bos=False))
        assert not vocab.is_eog(-1) and not vocab.is_eog(10**9)


def test_log_probs_a_server_put_for_cut_tokens_are_left_out() -> None:
    from qwq_local.engine.remote_client import parse_completion

    lowest = -3.4028234663852886e38  # SGLang's clamp of log(0) for the tokens top-p cut
    entry = {"token": "7", "logprob": -0.2, "top_logprobs": [{"token": "7", "logprob": -0.2},
                                                             {"token": "8", "logprob": lowest},
                                                             {"token": "9", "logprob": float("-inf")}]}
    data = {"choices": [{"text": "7", "finish_reason": "length", "logprobs": {"content": [entry]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    assert parse_completion(data, "u").choices[0].top_logprobs == [{"7": -0.2}]


def test_the_prompt_tokens_the_server_evaluated_come_from_its_timings_or_its_cache_hits() -> None:
    from qwq_local.engine.remote_client import parse_completion

    one = [{"text": "x", "finish_reason": "length"}]
    usage = {"prompt_tokens": 50, "completion_tokens": 1}
    cached = dict(usage, prompt_tokens_details={"cached_tokens": 42})  # vLLM, qwq serve
    assert parse_completion({"choices": one, "usage": cached}, "u").usage.evaluated_prompt_tokens == 8
    both = {"choices": one, "usage": cached, "timings": {"prompt_n": 3, "cache_n": 47}}  # llama-server's own count
    assert parse_completion(both, "u").usage.evaluated_prompt_tokens == 3
    assert parse_completion({"choices": one, "usage": usage}, "u").usage.evaluated_prompt_tokens is None
    silent = dict(usage, prompt_tokens_details=None)
    assert parse_completion({"choices": one, "usage": silent}, "u").usage.evaluated_prompt_tokens is None


def test_a_search_counts_what_the_server_says_it_evaluated() -> None:
    def reply(body: dict) -> list:
        return [choice(WORDS, stop="\n\n")]

    engine = ScriptedEngine(default=reply)
    lm = policy(engine)
    root = lm.open("q")
    lm.sample(root, 2, STOP)
    assert lm.counters.evaluated_prompt_tokens is None  # the scripted server reports no cache hits
    sent = lm.counters.prompt_tokens
    assert lm.stats.evaluated_tokens == sent + lm.counters.generated_tokens

    import httpx

    def cached(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        return httpx.Response(200, json={"choices": [choice(WORDS, stop="\n\n")], "usage": {
            "prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 7}}})

    remote = CompletionServer("http://engine.test", transport=httpx.MockTransport(cached), retry=Retry(attempts=1))
    lm = RemotePolicy(remote, ChatMLFormat(), Sampling(seed=1, max_tokens=100), thinks=False)
    lm.sample(lm.open("q"), 3, STOP)
    c = lm.counters
    assert c.requests == 3 and c.prompt_tokens == 30 and c.evaluated_prompt_tokens == 9
    assert lm.stats.evaluated_tokens == 9 + c.generated_tokens


class LlamaServerFake:
    """llama-server's discovery endpoints over a MockTransport: /props with its chat template, /tokenize (words)."""

    TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    def __init__(self, template: str | None = TEMPLATE, completions: ScriptedEngine | None = None) -> None:
        self.template = template
        self.completions = completions or ScriptedEngine(default=lambda body: [choice(WORDS, stop="\n\n")])
        self.tokenized: list[dict] = []

    def handle(self, request):  # type: ignore[no-untyped-def]
        import json

        import httpx

        if request.url.path == "/props":
            if self.template is None:
                return httpx.Response(404, text="Not Found")
            return httpx.Response(200, json={"chat_template": self.template, "bos_token": "<s>",
                                             "eos_token": "<|im_end|>", "total_slots": 4})
        if request.url.path == "/tokenize":
            body = json.loads(request.content)
            self.tokenized.append(body)
            words = body["content"].split()
            return httpx.Response(200, json={"tokens": ([1] if body.get("add_special") else []) + [7] * len(words)})
        return self.completions.handle(request)

    def server(self) -> CompletionServer:
        import httpx

        return CompletionServer("http://llama-server.test", transport=httpx.MockTransport(self.handle),
                                retry=Retry(attempts=2, sleep=lambda s: None))


def test_without_the_gguf_the_template_and_tokenizer_come_from_llama_servers_props() -> None:
    from qwq_local.dialog.messages import Message
    from qwq_local.engine.server_format import ServerFormat

    fake = LlamaServerFake()
    fmt = ServerFormat.discover(fake.server(), "qwq-32b")
    assert fmt is not None and fmt.added_bos == "<s>"  # the server puts BOS before a prompt by itself
    assert fmt.render_chat([Message("user", "What is 2+3?")]) == \
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.count_tokens("one two three") == 3 and fmt.count_tokens("one two three") == 3
    assert sum(b["content"] == "one two three" for b in fake.tokenized) == 1  # counted once, then remembered
    lm = RemotePolicy(fake.server(), fmt, Sampling(seed=1, max_tokens=100), thinks=True)
    [step] = lm.sample(lm.open("What is 2+3?"), 1, STOP)
    assert step.text == "one two three four\n\n"
    prompt = fake.completions.requests[0]["prompt"]
    assert prompt == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>\n"


def test_a_chat_template_given_wins_over_the_servers() -> None:
    from qwq_local.dialog.messages import Message
    from qwq_local.engine.server_format import ServerFormat

    fmt = ServerFormat.discover(LlamaServerFake().server(), "qwq-32b", override="[{{ messages[0]['content'] }}]")
    assert fmt is not None and fmt.render_chat([Message("user", "hi")]) == "[hi]" and fmt.added_bos == "<s>"


def test_a_servers_template_that_loops_forever_is_stopped() -> None:
    from qwq_local.dialog.messages import Message
    from qwq_local.engine.server_format import ServerFormat

    endless = "{% for i in range(10**9) %}{% for j in range(10**9) %}{% endfor %}{% endfor %}"
    fmt = ServerFormat.discover(LlamaServerFake(endless).server(), None)
    assert fmt is not None
    start = time.monotonic()
    with pytest.raises(EngineReplyError, match="chat template from .*/props failed"):
        fmt.render_chat([Message("user", "x")])
    assert time.monotonic() - start < 30


def test_a_server_that_says_no_template_gives_none() -> None:
    from qwq_local.engine.server_format import ServerFormat

    assert ServerFormat.discover(LlamaServerFake(template=None).server(), None) is None
    assert ServerFormat.discover(server(ScriptedEngine()), None) is None  # no /props at all (vLLM, llama_cpp.server)


def test_a_catalog_model_not_pulled_is_planned_from_the_catalog_for_an_engine(tmp_path: Path) -> None:
    from qwq_local.app.runtime import plan_for
    from qwq_local.config import load_settings
    from qwq_local.errors import NotPulledError

    settings = load_settings({"engine": "http://gpu-box:8000", "model": "qwq-32b", "models_dir": tmp_path}, env={})
    plan = plan_for(settings)
    assert not plan.pulled and plan.thinks and plan.info.n_layer == 64 and not plan.resolved.path.exists()
    with pytest.raises(NotPulledError, match="qwq pull"):  # a file name the catalog does not know
        plan_for(load_settings({"engine": "http://gpu-box:8000", "model": "hf:someone/repo/x.gguf",
                                "models_dir": tmp_path}, env={}))


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])  # llama-server and old vLLM; vLLM >= 0.11
def test_server_chat_shows_vllms_separate_reasoning_as_folded_thinking(field: str) -> None:
    import json

    import httpx

    from qwq_local.dialog.messages import Message
    from qwq_local.engine.remote_chat import ServerChat

    asked: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(json.loads(request.content))
        deltas = [{field: "2 and 2"}, {field: " make 4."}, {"content": "\\boxed{4}"}]
        events = [{"choices": [{"delta": d, "finish_reason": None}]} for d in deltas]
        events += [{"choices": [{"delta": {}, "finish_reason": "stop"}]},
                   {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9}}]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    server = CompletionServer("http://vllm.test", transport=httpx.MockTransport(handle))
    chat = ServerChat(server, name="qwq-32b", n_ctx=32768, model="Qwen/QwQ-32B")
    history = [Message("user", "1+1?"), Message("assistant", "<think>\nhm\n</think>\n\n2"), Message("user", "2+2?")]
    text = "".join(chat.stream(history, Sampling(max_tokens=100)))
    assert text == "<think>\n2 and 2 make 4.\n</think>\n\n\\boxed{4}"
    assert asked[0]["messages"][1]["content"] == "2" and asked[0]["model"] == "Qwen/QwQ-32B"  # final answers only
    stats = chat.last_stats
    assert stats is not None and stats.prompt_tokens == 12 and stats.stop_reason == "eos"
    assert stats.thinking_tokens + stats.answer_tokens == 9
    # QwQ planned as thinking (the reply opens inside <think>): the answer is still closed off from the thinking
    thinking = ServerChat(server, name="qwq-32b", n_ctx=32768, model="Qwen/QwQ-32B", think=True)
    assert "".join(thinking.stream(history, Sampling(max_tokens=100))) == text
    assert thinking.last_stats is not None and thinking.last_stats.answer_tokens > 0


def slow_server(events: list[tuple[float, str]]) -> tuple[str, socket.socket]:
    """A one-connection HTTP server that writes a reply as a server does while it generates: asked to stream, a
    text/event-stream whose pieces come after the given pauses (seconds); else nothing until the whole reply is
    there (all the pauses), then the events' choices joined in one JSON body."""
    import json

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        conn = listener.accept()[0]
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            if json.loads(body).get("stream"):
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                for pause, piece in events:
                    time.sleep(pause)
                    conn.sendall(piece.encode())
                return
            time.sleep(sum(pause for pause, _ in events))
            chunks = [json.loads(piece[len("data: "):]) for _, piece in events if "[DONE]" not in piece]
            text = "".join(c["text"] for event in chunks for c in event["choices"])
            reply = json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": "length"}]}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(reply), reply))

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", listener


def sse(event: dict) -> str:
    import json

    return f"data: {json.dumps(event)}\n\n"


def test_a_reply_that_takes_longer_than_the_timeout_is_streamed_through() -> None:
    """engine_timeout bounds a stall between tokens, not the whole reply (it was one request of the whole reply)."""
    pieces = [(0.25, sse({"choices": [{"index": 0, "text": w, "finish_reason": None}]})) for w in WORDS[:4]]
    pieces += [(0.25, sse({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})), (0, "data: [DONE]\n\n")]
    url, listener = slow_server(pieces)
    with listener:
        start = time.monotonic()
        reply = CompletionServer(url, timeout=0.6).complete({"prompt": "x", "max_tokens": 4})
    assert time.monotonic() - start > 1.0  # longer than the timeout in all
    assert reply.choices[0].text == "one two three four" and reply.choices[0].finish_reason == "length"


def test_a_stream_that_stalls_in_the_middle_times_out() -> None:
    url, listener = slow_server([(0, sse({"choices": [{"index": 0, "text": "one", "finish_reason": None}]})),
                                 (5, "data: [DONE]\n\n")])
    with listener, pytest.raises(EngineUnreachableError, match="stalled for 0.5 s in the middle"):
        CompletionServer(url, timeout=0.5).complete({"prompt": "x"})


def test_streamed_chunks_join_into_the_reply_a_plain_request_gets() -> None:
    """vLLM's form: stop_reason null in every chunk but the last, usage in a last chunk without choices."""
    from qwq_local.engine.remote_client import Chunks

    chunks = Chunks()
    for event in [
        {"choices": [{"index": 1, "text": "b", "logprobs": {"tokens": ["b"], "token_logprobs": [-1.0]},
                      "finish_reason": None, "stop_reason": None}]},
        {"choices": [{"index": 0, "text": "a", "logprobs": {"tokens": ["a"], "token_logprobs": [-0.5]},
                      "finish_reason": None, "stop_reason": None},
                     {"index": 1, "text": "", "logprobs": {"tokens": ["\n\n"], "token_logprobs": [-0.1]},
                      "finish_reason": "stop", "stop_reason": "\n\n"}]},
        {"choices": [{"index": 0, "text": "", "finish_reason": "stop", "stop_reason": None}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}},
    ]:
        chunks.add(event)
    from qwq_local.engine.remote_client import parse_completion

    reply = parse_completion(chunks.data(), "http://engine.test")
    a, b = reply.choices
    assert (a.text, a.tokens, a.stopped_at_string) == ("a", ["a"], False)  # ended at EOS
    assert (b.text, b.tokens, b.token_logprobs, b.stopped_at_string) == ("b", ["b", "\n\n"], [-1.0, -0.1], True)
    assert reply.usage.prompt_tokens == 3 and reply.usage.completion_tokens == 3


def test_an_error_in_the_middle_of_a_stream_is_one_line() -> None:
    engine = ScriptedEngine([lambda body: (200, sse({"choices": [{"index": 0, "text": "one"}]}) + sse(
        {"error": {"message": "out of memory\nat slot 0"}}))])
    with pytest.raises(EngineReplyError, match=r"broke off /v1/completions: out of memory at slot 0$"):
        server(engine).complete({"prompt": "x"})


def test_a_server_that_answers_a_stream_request_with_one_json_body_is_read() -> None:
    import httpx

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [choice(WORDS[:2], "length")], "usage": {}})

    reply = CompletionServer("http://engine.test", transport=httpx.MockTransport(handle)).complete({"prompt": "x"})
    assert reply.choices[0].text == "one two" and reply.choices[0].tokens == ["one", " two"]


def test_search_requests_are_streamed() -> None:
    engine = ScriptedEngine([[choice(WORDS, stop="\n\n")] * 2])
    lm = policy(engine)
    lm.sample(lm.open("q"), 2, STOP)
    assert engine.requests[0]["stream"] is True and engine.requests[0]["stream_options"] == {"include_usage": True}


def test_a_stream_the_server_cuts_short_is_asked_again_whole_and_no_more_streams() -> None:
    """llama-cpp-python's server ends one stream when the next request comes (interrupt_requests): the replies of
    concurrent requests came back without a finish_reason and every search failed."""
    cut = (200, sse({"choices": [{"index": 0, "text": "one", "finish_reason": None}]}) + "data: [DONE]\n\n")
    engine = ScriptedEngine([lambda body: cut, [choice(WORDS, stop="\n\n")], [choice(WORDS, stop="\n\n")]])
    remote = server(engine)
    assert remote.complete({"prompt": "x"}).choices[0].text == "one two three four"
    assert remote.complete({"prompt": "y"}).choices[0].finish_reason == "stop"
    assert [r.get("stream", False) for r in engine.requests] == [True, False, False]


def test_llama_servers_per_choice_usage_is_the_first_choices_as_when_asked_whole() -> None:
    """llama-server streams n = K as K slots: each choice's last chunk has that slot's usage and timings."""
    from qwq_local.engine.remote_client import Chunks, parse_completion

    chunks = Chunks()
    for index, prompt_n in ((0, 7), (1, 0)):  # the second slot found the prompt cached
        chunks.add({"choices": [{"index": index, "text": "x", "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 1}, "timings": {"prompt_n": prompt_n}})
    reply = parse_completion(chunks.data(), "http://engine.test")
    assert reply.usage.evaluated_prompt_tokens == 7 and reply.usage.completion_tokens == 1


def test_a_connection_dropped_before_the_answer_is_tried_again() -> None:
    """As a whole request was (a keep-alive connection the server closed as it was reused, say)."""
    import httpx

    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"choices": [choice(WORDS[:2], "length")]})

    waits: list[float] = []
    remote = CompletionServer("http://engine.test", transport=httpx.MockTransport(handle),
                              retry=Retry(attempts=3, sleep=waits.append))
    assert remote.complete({"prompt": "x"}).choices[0].text == "one two" and waits == [0.5]


def test_a_request_given_up_stops_reading_its_stream() -> None:
    from qwq_local.engine.remote_client import Abandoned, Chunks

    engine = ScriptedEngine([[choice(WORDS, "length")]])
    chunks = Chunks()
    chunks.abandoned = True  # as a Ctrl-C in another thread marks it
    with pytest.raises(Abandoned):
        server(engine).complete({"prompt": "x"}, chunks)
    assert not chunks.choices


@pytest.mark.parametrize("matched, at_string", [("\n\n", True), (151645, False)])
def test_sglangs_matched_stop_tells_a_stop_string_from_the_end_token(matched: object, at_string: bool) -> None:
    """SGLang names the stop in `matched_stop` (the string, or the end token's id), set in the last chunk only."""
    from qwq_local.engine.remote_client import Chunks, parse_completion

    chunks = Chunks()
    chunks.add({"choices": [{"index": 0, "text": "one two", "finish_reason": None, "matched_stop": None,
                             "logprobs": {"tokens": ["one", " two"], "token_logprobs": [-0.1, -0.2]}}]})
    chunks.add({"choices": [{"index": 0, "text": "", "finish_reason": "stop", "matched_stop": matched}]})
    assert parse_completion(chunks.data(), "http://engine.test").choices[0].stopped_at_string is at_string


@pytest.mark.parametrize("piece, count", [("", 200), ("word " * 5000, 20)])
def test_a_server_that_streams_on_past_what_it_was_asked_is_stopped(piece: str, count: int) -> None:
    """A stream without end (empty chunks, or text far past max_tokens) was read until memory ran out."""
    endless = "".join(sse({"choices": [{"index": 0, "text": piece, "finish_reason": None}]}) for _ in range(count))
    engine = ScriptedEngine([lambda body: (200, endless)])
    with pytest.raises(EngineReplyError, match="far more than the 10 tokens it was asked for"):
        server(engine).complete({"prompt": "x", "max_tokens": 10})


@pytest.mark.parametrize("via", ["template", "server"])
def test_a_chat_stream_without_end_is_stopped(via: str) -> None:
    import httpx

    from qwq_local.dialog.messages import Message
    from qwq_local.engine.remote_chat import RemoteChat, ServerChat

    def handle(request: httpx.Request) -> httpx.Response:
        key = "text" if via == "template" else "delta"
        event = {"choices": [{"index": 0, key: "" if key == "text" else {}, "finish_reason": None}]}
        return httpx.Response(200, text=sse(event) * 500, headers={"content-type": "text/event-stream"})

    remote = CompletionServer("http://engine.test", transport=httpx.MockTransport(handle))
    chat = RemoteChat(remote, ChatMLFormat(), name="scripted", n_ctx=4096, think=False) if via == "template" else \
        ServerChat(remote, name="scripted", n_ctx=4096, think=False)
    with pytest.raises(EngineReplyError, match="far more than the 20 tokens"):
        "".join(chat.stream([Message("user", "hi")], Sampling(max_tokens=20)))
