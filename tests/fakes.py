"""Deterministic fakes for the search core: a scripted step LM, a fixed scorer and a hand-driven clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

from qwq_local.search.protocol import Candidate, LMStats, StepStop

Path = tuple[str, ...]
Scripted = Union[str, tuple[str, bool]]  # a step text (not finished) or (text, finished)
Script = Mapping[Path, Sequence[Scripted]]


def script_from_tree(tree: Mapping[str, Any], path: Path = ()) -> dict[Path, list[tuple[str, bool]]]:
    """A Script from a nested dict: step text -> subtree, where None marks a finished step.

    `{"A": {"A1": None}, "B": {}}`: the root offers A and B; A offers the finished A1; B offers nothing.
    """
    script: dict[Path, list[tuple[str, bool]]] = {path: []}
    for text, subtree in tree.items():
        script[path].append((text, subtree is None))
        if subtree is not None:
            script.update(script_from_tree(subtree, path + (text,)))
    return script


@dataclass
class SampleCall:
    """What one `sample` call was asked."""

    branch: int
    k: int
    path: Path
    stop: StepStop
    live: int  # branches live when the call was made


class ScriptedLM:
    """A StepLM that answers from a script keyed by the path of step texts so far.

    `sample(branch, k)` returns the first k scripted next steps of the branch's path (fewer if
    fewer are scripted; none for an unscripted path). Every candidate gets a fresh branch. It
    fails loudly when a released or unknown branch is sampled or released, and counts
    whitespace tokens of the sampled steps as generated tokens.
    """

    def __init__(
        self,
        script: Script,
        *,
        yes: float | Callable[[str], float] = 0.5,
        on_sample: Callable[[], None] | None = None,
        hidden: Any = None,
    ) -> None:
        self.script: dict[Path, list[tuple[str, bool]]] = {
            tuple(path): [(s, False) if isinstance(s, str) else (s[0], bool(s[1])) for s in steps]
            for path, steps in script.items()
        }
        self.yes = yes
        self.on_sample = on_sample
        self.hidden = hidden
        self.stats = LMStats()
        self.paths: dict[int, Path] = {}  # live branches
        self.questions: list[str] = []
        self.sample_calls: list[SampleCall] = []
        self.released: list[int] = []
        self.yes_prompts: list[str] = []
        self.history: list[tuple[Any, ...]] = []
        self._next_branch = 0

    @property
    def live(self) -> set[int]:
        return set(self.paths)

    @property
    def expanded_paths(self) -> list[Path]:
        return [call.path for call in self.sample_calls]

    def _new_branch(self, path: Path) -> int:
        branch = self._next_branch
        self._next_branch += 1
        self.paths[branch] = path
        return branch

    def open(self, question: str) -> int:
        self.questions.append(question)
        branch = self._new_branch(())
        self.history.append(("open", question, branch))
        return branch

    def sample(self, branch: int, k: int, stop: StepStop) -> list[Candidate]:
        if branch not in self.paths:
            raise AssertionError(f"sampled branch {branch}, which is released or unknown")
        path = self.paths[branch]
        self.sample_calls.append(SampleCall(branch, k, path, stop, live=len(self.paths)))
        self.history.append(("sample", branch, k))
        if self.on_sample is not None:
            self.on_sample()
        out: list[Candidate] = []
        for text, finished in self.script.get(path, [])[:k]:
            n_tokens = len(text.split())
            self.stats.generated_tokens += n_tokens
            self.stats.evaluated_tokens += n_tokens
            out.append(Candidate(text, self._new_branch(path + (text,)), n_tokens, finished, hidden=self.hidden))
        live_tokens = sum(len(" ".join(p).split()) for p in self.paths.values())
        self.stats.peak_kv_tokens = max(self.stats.peak_kv_tokens, live_tokens)
        return out

    def release(self, branch: int) -> None:
        if branch not in self.paths:
            raise AssertionError(f"released branch {branch} twice, or it never existed")
        del self.paths[branch]
        self.released.append(branch)
        self.history.append(("release", branch))

    def yes_probability(self, prompt: str) -> float:
        self.yes_prompts.append(prompt)
        self.history.append(("yes", prompt))
        return self.yes(prompt) if callable(self.yes) else self.yes


@dataclass
class FixedScorer:
    """A Scorer that gives each candidate text a fixed value (`default` for unknown texts)."""

    scores: Mapping[str, float] = field(default_factory=dict)
    default: float = 0.5
    name: str = "fixed"
    calls: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)

    def score(self, question: str, steps: Sequence[str], candidate: Candidate) -> float:
        self.calls.append((question, tuple(steps), candidate.text))
        return self.scores.get(candidate.text, self.default)


@dataclass
class FakeClock:
    """A clock that moves only when told to."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 1.0) -> None:
        self.now += seconds


class ScriptedPolicy(ScriptedLM):
    """A ScriptedLM a whole `qwq solve` can run on: it also counts tokens (whitespace words) as a policy does."""

    def prompt_tokens(self, question: str) -> list[int]:
        return list(range(len(question.split())))

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def write_tiny_gguf(path: Any) -> Any:
    """A header-only qwen2-shaped GGUF (2 layers, n_embd 64): enough to plan a model, not to run one."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_name("Tiny Qwen2")
    writer.add_context_length(4096)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class ScriptedEngine:
    """An OpenAI-compatible server in a `httpx.MockTransport`: answers `/v1/completions` from a queue of replies.

    A reply is a completion's choices (a list of dicts, see `choice`), an HTTP status (int) with an error body,
    `(status, body_text)`, or a callable taking the request body. `/v1/models` lists one model. `requests` keeps
    every completion request's JSON body.
    """

    def __init__(self, replies: Sequence[Any] = (), *, default: Any = None) -> None:
        self.replies = list(replies)
        self.default = default
        self.requests: list[dict[str, Any]] = []

    def transport(self) -> Any:
        import httpx

        return httpx.MockTransport(self.handle)

    def handle(self, request: Any) -> Any:
        import json

        import httpx

        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "scripted"}]})
        if request.url.path != "/v1/completions":  # as servers without llama-server's /props, /tokenize, ...
            return httpx.Response(404, json={"detail": "Not Found"})
        body = json.loads(request.content)
        self.requests.append(body)
        reply = self.replies.pop(0) if self.replies else self.default
        if reply is None:
            raise AssertionError(f"unscripted request: {body}")
        if callable(reply):
            reply = reply(body)
        if isinstance(reply, int):
            return httpx.Response(reply, json={"error": {"message": f"scripted {reply}"}})
        if isinstance(reply, tuple):
            status, text = reply
            return httpx.Response(status, text=text)
        usage = {"prompt_tokens": len(body["prompt"].split()),
                 "completion_tokens": sum(_n_tokens(c) for c in reply)}
        choices = [dict(c, index=i) for i, c in enumerate(reply)]
        if not body.get("stream"):
            return httpx.Response(200, json={"choices": choices, "usage": usage})
        events = [*stream_chunks(choices), {"choices": [], "usage": usage}]
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


def stream_chunks(choices: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`choices` as a server streams them: a chunk per token (its text and log-probs), the choices' chunks
    interleaved, finish_reason (and stop_reason) only in each choice's last chunk."""
    per_choice = []
    for c in choices:
        logprobs = c.get("logprobs") or {}
        n = len(logprobs.get("tokens") or logprobs.get("content") or [])
        texts = [str(t) for t in logprobs.get("tokens") or [e["token"] for e in logprobs.get("content") or []]]
        left, chunks = c["text"], []
        for i in range(n):
            piece, left = left[:len(texts[i])], left[len(texts[i]):]
            part = {key: value[i:i + 1] for key, value in logprobs.items()}
            chunks.append({"index": c["index"], "text": piece, "logprobs": part, "finish_reason": None})
        last = {"index": c["index"], "text": left, "finish_reason": c.get("finish_reason")}
        if "stop_reason" in c:
            last["stop_reason"] = c["stop_reason"]
        per_choice.append([*chunks, last])
    events = []
    for i in range(max(len(chunks) for chunks in per_choice)):
        events.append({"choices": [chunks[i] for chunks in per_choice if i < len(chunks)]})
    return events


def _n_tokens(choice: Mapping[str, Any]) -> int:
    logprobs = choice.get("logprobs") or {}
    return len(logprobs.get("tokens") or logprobs.get("content") or [None])


def choice(tokens: Sequence[str], finish: str = "stop", *, stop: str | None = None,
           top: Sequence[Mapping[str, float]] | None = None, logprob: float = -0.5) -> dict[str, Any]:
    """One completion choice as llama.cpp's servers write it: the text is the tokens joined, cut before `stop`."""
    joined = "".join(tokens)
    text = joined[: joined.index(stop)] if stop is not None else joined
    tops = list(top) if top is not None else [{t: logprob} for t in tokens]
    return {"text": text, "finish_reason": finish,
            "logprobs": {"tokens": list(tokens), "token_logprobs": [logprob] * len(tokens), "top_logprobs": tops}}


def llama_server_choice(tokens: Sequence[tuple[int, str]], *, stop: str | None = None) -> dict[str, Any]:
    """One choice as llama-server writes it (tools/server: send_final_response, probs_vector_to_json): log-probs in
    the chat form with token ids; at a stop string the text is cut before it and so are the stop string's tokens
    (here: the tokens from the one holding it), while an end-of-generation token stays as the last entry, text ""."""
    texts = [t for _, t in tokens]
    joined = "".join(texts)
    kept = list(tokens)
    if stop is not None:
        at = joined.index(stop)
        used = 0
        for i, (_, t) in enumerate(tokens):
            if used + len(t) > at:
                kept = tokens[:i]
                break
            used += len(t)
        joined = joined[:at]
    entries = [{"id": i, "token": t, "bytes": list(t.encode()), "logprob": -0.5, "top_logprobs": [
        {"id": i, "token": t, "bytes": list(t.encode()), "logprob": -0.5}]} for i, t in kept]
    return {"text": joined, "finish_reason": "stop", "logprobs": {"content": entries}}


class ChatMLFormat:
    """A PromptFormat without a GGUF: ChatML, and whitespace words as tokens."""

    added_bos = ""

    def render_chat(self, messages: Sequence[Any]) -> str:
        turns = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"

    def count_tokens(self, text: str) -> int:
        return len(text.split())
