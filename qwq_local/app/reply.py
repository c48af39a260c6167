"""The reply service an API front end calls: one chat turn, text completion or search on the loaded model.

A reply streams as events (thinking and answer deltas, search progress), honours a thinking budget and stop
sequences, and stops between tokens when its caller says it is cancelled. Calls must not overlap: the model
has one chat context, so a front end runs them one at a time.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence, Union

from qwq_local.app.search import CHAT_SEARCH, prepare_search
from qwq_local.app.solve import PolicyFactory, SolveResult, solve_search
from qwq_local.config import Sampling, Settings
from qwq_local.dialog.messages import Message, TokenLogprob, TurnStats
from qwq_local.dialog.think import Segment, ThinkParser, strip_closed_thinking
from qwq_local.errors import UsageError
from qwq_local.dialog.guard import Intervention
from qwq_local.search.config import SearchConfig
from qwq_local.search.strategies import STRATEGIES

# What `reasoning_effort` means as a thinking budget in tokens.
REASONING_EFFORT: dict[str, int] = {"minimal": 256, "low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768}
SEARCH_STRATEGIES: tuple[str, ...] = tuple(s for s in STRATEGIES if s != "direct")


@dataclass(frozen=True)
class SearchChoice:
    """A reply found by search: the strategy, its knobs (chat defaults changed by the request) and scorer."""

    strategy: str
    config: SearchConfig = CHAT_SEARCH
    scorer: str | None = None


@dataclass(frozen=True)
class ReplyRequest:
    """One request: chat messages (or a raw `prompt` to continue), sampling, thinking budget, stops, search."""

    messages: tuple[Message, ...]
    sampling: Sampling
    prompt: str | None = None  # a text completion: continue this text, no template and no thinking
    think_budget: int | None = None  # close the thinking after this many tokens (and open it on any model)
    stop: tuple[str, ...] = ()  # the answer ends before the first of these (the thinking is not cut)
    search: SearchChoice | None = None
    logprobs: int | None = None  # a text completion's tokens with their log-probs and this many alternatives


@dataclass(frozen=True)
class Delta:
    """A piece of the reply, thinking or answer, tags removed."""

    kind: Literal["thinking", "answer"]
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens whose text this piece ends (when they were asked for)


@dataclass(frozen=True)
class Progress:
    """What a search has done so far (it streams no tokens until it has chosen)."""

    text: str


Event = Union[Delta, Progress]


@dataclass(frozen=True)
class SearchSummary:
    """How a search reply was found."""

    strategy: str
    expansions: int
    nodes: int
    generated_tokens: int
    complete: bool
    stop_reason: str
    final_answer: str | None


@dataclass(frozen=True)
class ReplyResult:
    """A finished reply: its parts, token counts and why it ended ("stop" | "length" | "cancelled")."""

    thinking: str
    answer: str
    prompt_tokens: int
    cached_tokens: int
    thinking_tokens: int
    answer_tokens: int
    finish_reason: str
    seconds: float
    search: SearchSummary | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None  # the answer's tokens, when asked for
    stop: str | None = None  # the stop sequence that ended the answer (None: the model's end, or a limit)

    @property
    def completion_tokens(self) -> int:
        return self.thinking_tokens + self.answer_tokens


class Cancelled(Exception):
    """The caller went away; the reply was stopped after `tokens` generated tokens."""

    def __init__(self, tokens: int = 0) -> None:
        super().__init__(f"cancelled after {tokens} tokens")
        self.tokens = tokens


class ChatEngine(Protocol):
    """What the reply service needs of a chat model (engine.chat.LlamaChat; tests' FakeChat)."""

    name: str
    n_ctx: int
    last_stats: Any

    def stream(self, messages: list[Message], sampling: Sampling, *, intervene: Any = None,
               think: bool | None = None) -> Iterator[str]: ...

    def continue_text(self, text: str, sampling: Sampling, logprobs: int | None = None) -> Iterator[str]: ...

    token_log: list[TokenLogprob]  # the tokens of the last continue_text asked for log-probs


class StopScanner:
    """Pass text through until the first stop sequence; hold back a tail that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""
        self.hit = False
        self.which: str | None = None  # the stop sequence found

    def feed(self, text: str) -> str:
        if not self.stops or self.hit:
            return "" if self.hit else text
        text = self.held + text
        found = [(at, s) for at, s in ((text.find(s), s) for s in self.stops) if at >= 0]
        if found:
            at, self.which = min(found, key=lambda f: f[0])
            self.hit, self.held = True, ""
            return text[:at]
        keep = max(_tail_prefix(text, s) for s in self.stops)
        self.held = text[len(text) - keep:]
        return text[: len(text) - keep]

    def close(self) -> str:
        text, self.held = self.held, ""
        return "" if self.hit else text


def _tail_prefix(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


class SearchRunner:
    """A search on the loaded model for one request: `prepare_search` then `solve_search`, as `qwq solve` does."""

    def __init__(self, plan: Any, settings: Settings, policies: PolicyFactory, head: Any = None) -> None:
        self.plan = plan
        self.settings = settings
        self.policies = policies
        self.head = head

    def __call__(self, choice: SearchChoice, question: str, earlier: Sequence[Message], sampling: Sampling,
                 on_sample: Callable[[Any], None]) -> SolveResult:
        settings = replace(self.settings, sampling=sampling)
        setup = prepare_search(self.plan, settings, choice.strategy, choice.config, choice.scorer, head=self.head)

        @contextlib.contextmanager
        def watched(setup: Any, sampling: Sampling, history: Sequence[Any] = ()) -> Iterator[Any]:
            with self.policies(setup, sampling, history) as policy:
                yield _WatchedPolicy(policy, on_sample)

        return solve_search(setup, question, "plain", sampling, watched, history=earlier)


class _WatchedPolicy:
    """A search policy that reports each sample call (and may raise Cancelled there) before passing it on."""

    def __init__(self, policy: Any, on_sample: Callable[[Any], None]) -> None:
        self._policy = policy
        self._on_sample = on_sample

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def sample(self, branch: int, k: int, stop: Any) -> Any:
        self._on_sample(self._policy)
        return self._policy.sample(branch, k, stop)


class ReplyService:
    """Replies on one loaded chat model (and its searches); build it with `ReplyService.load(settings)`."""

    def __init__(self, chat: ChatEngine, name: str, *, sampling: Sampling = Sampling(),
                 search: SearchRunner | None = None, close: Callable[[], None] | None = None) -> None:
        self.chat = chat
        self.name = name
        self.sampling = sampling  # what a request that sets no sampling gets
        self.search = search
        self._close = close

    @classmethod
    def load(cls, settings: Settings) -> "ReplyService":
        """Plan and load `settings.model` once (and its Q-value head, if any) for chat and search."""
        from qwq_local.app import runtime
        from qwq_local.app.search import load_head
        from qwq_local.app.solve import TreePolicies
        from qwq_local.engine.chat import LlamaChat

        plan = runtime.plan_model(runtime.locate(settings.model, settings), settings)
        settings = runtime.sized_to(plan, settings)
        head = load_head(plan, settings, required=settings.head is not None)
        loaded = runtime.load(plan, settings)
        chat = LlamaChat(loaded, think=plan.thinks or None)
        return cls(chat, model_id(settings.model), sampling=settings.sampling, search=SearchRunner(plan, settings, TreePolicies(loaded), head),
                   close=loaded.close)

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    @property
    def n_ctx(self) -> int:
        return self.chat.n_ctx

    def reply(self, request: ReplyRequest, emit: Callable[[Event], None],
              cancelled: Callable[[], bool] = lambda: False) -> ReplyResult:
        """Answer `request`, sending its pieces to `emit` as they come; Cancelled when `cancelled()` turns True."""
        if request.search is not None:
            return self._search(request, emit, cancelled)
        start = time.perf_counter()
        tokens: _TokenFeed | None = None
        if request.prompt is not None:
            stream = self.chat.continue_text(request.prompt, request.sampling, request.logprobs)
            if request.logprobs is not None:
                tokens = _TokenFeed(self.chat.token_log)
            parser = None
        else:
            guard = Intervention(budget=request.think_budget)
            stream = self.chat.stream(_history(request.messages), request.sampling, intervene=guard,
                                      think=True if request.think_budget else None)
            parser = ThinkParser()
        out = _Collector(emit, request.stop, trim=parser is not None, tokens=tokens)
        stopped = was_cancelled = False
        try:
            for piece in stream:
                if cancelled():
                    was_cancelled = True
                    break
                out.add(parser.feed(piece) if parser else [Segment("answer", piece)])
                if out.stops.hit:
                    stopped = True
                    break
        finally:
            stream.close()
        if was_cancelled:
            raise Cancelled(TurnStats.of(self.chat.last_stats).generated_tokens)
        if not stopped:
            out.add(parser.close() if parser else [])
            out.finish()
        stats = TurnStats.of(self.chat.last_stats)
        finish = "stop" if stopped or stats.stop_reason == "eos" else "length"
        return ReplyResult(out.text("thinking"), out.text("answer"), stats.prompt_tokens,
                           max(stats.prompt_tokens - stats.evaluated_prompt_tokens, 0), stats.thinking_tokens,
                           stats.answer_tokens, finish, time.perf_counter() - start,
                           logprobs=tokens.sent if tokens is not None else None, stop=out.stops.which)

    def _search(self, request: ReplyRequest, emit: Callable[[Event], None],
                cancelled: Callable[[], bool]) -> ReplyResult:
        choice = request.search
        assert choice is not None
        if self.search is None:
            raise UsageError("this server cannot search")
        if request.prompt is not None:
            raise UsageError("search answers chat completions only")
        messages = _history(request.messages)
        if not messages or messages[-1].role != "user":
            raise UsageError("a search answers the last message, which must be the user's")
        calls = [0]

        def on_sample(policy: Any) -> None:
            if cancelled():
                raise Cancelled(policy.stats.generated_tokens)
            calls[0] += 1
            emit(Progress(f"{choice.strategy}: sample call {calls[0]}, "
                          f"{policy.stats.generated_tokens} tokens generated"))

        start = time.perf_counter()
        result = self.search(choice, messages[-1].content, messages[:-1], request.sampling, on_sample)
        search = result.search
        assert search is not None
        out = _Collector(emit, request.stop)
        out.add([Segment("thinking", result.thinking), Segment("answer", result.answer)])
        out.finish()
        finish = "stop" if search.complete or out.stops.hit else "length"
        return ReplyResult(out.text("thinking"), out.text("answer"), result.prompt_tokens, 0, result.thinking_tokens,
                           result.answer_tokens, finish, time.perf_counter() - start,
                           SearchSummary(choice.strategy, search.expansions, search.nodes, search.generated_tokens,
                                         search.complete, search.stop_reason, result.final_answer))


class _TokenFeed:
    """A text completion's token log-probs handed out with the text they spell: a piece of text released past the
    stop scanner takes the tokens it completes; at a stop, the token that reaches into the stop sequence and those
    after it go too, as llama.cpp's servers give them (so that a client can tell a stop sequence from the end)."""

    def __init__(self, log: list[TokenLogprob]) -> None:
        self.log = log  # the engine appends to it as it generates
        self.taken = 0  # entries of `log` handed out
        self.spare = 0  # characters released beyond the entries handed out (the start of a token not yet whole)

    @property
    def sent(self) -> tuple[TokenLogprob, ...]:
        return tuple(self.log[:self.taken])

    def release(self, chars: int, *, through: bool = False) -> tuple[TokenLogprob, ...]:
        """The tokens that `chars` more characters of text complete; `through`: and every token generated (at a
        stop, or at the end)."""
        self.spare += chars
        out = []
        while self.taken < len(self.log):
            entry = self.log[self.taken]
            if not through and len(entry.text) > self.spare:
                break
            self.spare = max(self.spare - len(entry.text), 0)
            self.taken += 1
            out.append(entry)
        return tuple(out)


class _Collector:
    """Segments to deltas: the answer cut at a stop sequence; `trim`: each part's outer whitespace dropped;
    `tokens`: each answer piece with the token log-probs whose text it completes."""

    def __init__(self, emit: Callable[[Event], None], stops: Sequence[str], trim: bool = True,
                 tokens: _TokenFeed | None = None) -> None:
        self.emit = emit
        self.trim = trim
        self.stops = StopScanner(stops)
        self.tokens = tokens
        self.parts: dict[str, list[str]] = {"thinking": [], "answer": []}

    def add(self, segments: Sequence[Segment]) -> None:
        for segment in segments:
            text = self.stops.feed(segment.text) if segment.kind == "answer" else segment.text
            self._send(segment.kind, text, through=self.stops.hit)

    def finish(self) -> None:
        self._send("answer", self.stops.close(), through=True)

    def _send(self, kind: str, text: str, through: bool = False) -> None:
        if self.trim and not self.parts[kind]:
            text = text.lstrip()
        logprobs = self.tokens.release(len(text), through=through) if self.tokens and kind == "answer" else ()
        if text or logprobs:
            self.parts[kind].append(text)
            self.emit(Delta(kind, text, logprobs))  # type: ignore[arg-type]

    def text(self, kind: str) -> str:
        text = "".join(self.parts[kind])
        return text.rstrip() if self.trim else text


def _history(messages: Sequence[Message]) -> list[Message]:
    """The messages the model sees: earlier replies' thinking removed, as QwQ's template requires."""
    return [Message(m.role, strip_closed_thinking(m.content) if m.role == "assistant" else m.content)
            for m in messages]


def model_id(model: str) -> str:
    """The id clients use for `model`: a catalog name as it is, a file by its name without `.gguf`."""
    if model.endswith(".gguf") or "/" in model:
        return Path(model).name.removesuffix(".gguf")
    return model
