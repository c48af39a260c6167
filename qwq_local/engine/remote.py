"""The StepLM protocol on a remote OpenAI-compatible engine: branches are prompt texts, steps end through `stop`.

Every request carries the whole branch as raw prompt text, so a server with a prefix cache (vLLM, SGLang,
llama-server) evaluates the shared prefix of sibling branches once. Hidden states do not cross the wire.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence, TypeVar

from qwq_local.config import Sampling
from qwq_local.dialog.messages import Message
from qwq_local.dialog.think import CLOSE, OPEN_LINE
from qwq_local.engine.remote_client import Chunks, Choice, Completion, CompletionServer, Usage, parse_completion
from qwq_local.errors import EngineReplyError
from qwq_local.search.protocol import Candidate, Interrupted, LMStats, StepStop

TOP_LOGPROBS = 20  # DeepConf's k for token confidence; a server that allows fewer is asked for what it allows
MAX_PARALLEL = 16  # concurrent requests when the server ignores n > 1
T = TypeVar("T")


class PromptFormat(Protocol):
    """The model's chat template and tokenizer, applied on this side of the wire."""

    added_bos: str  # the BOS text a tokenizer of this model puts before a prompt by itself ("" for none)

    def render_chat(self, messages: Sequence[Message]) -> str: ...

    def count_tokens(self, text: str) -> int: ...


@dataclass
class EngineCounters:
    """What the remote engine was asked to do: requests, tokens it generated and tokens it had to read."""

    requests: int = 0
    generated_tokens: int = 0  # every completion token the server produced (continuations and cut tails too)
    prompt_tokens: int = 0  # prompt tokens sent (a server without a prefix cache evaluates all of them)
    evaluated_prompt_tokens: int | None = None  # prompt tokens it says it evaluated (timings, cached_tokens)
    peak_request_tokens: int = 0  # the longest prompt + completion of one request


@dataclass
class _Branch:
    text: str  # the prompt and the reply so far, exactly as sent
    in_think: bool
    reply_tokens: int
    prompt_tokens: int = 0  # of its prompt, counted once when there is a server context to keep within


@dataclass
class _Step:
    """A step being grown from a branch, perhaps over several requests."""

    in_think: bool
    reply_tokens: int
    text: str = ""
    n_tokens: int = 0
    logprobs: list[float] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    finished: bool = False
    ended: bool = False


class _Replies:
    """The K replies of one sample call as they grow (threads write them under `lock`; a Ctrl-C reads them)."""

    def __init__(self, k: int, parent: _Branch) -> None:
        self.steps = [_Step(parent.in_think, parent.reply_tokens) for _ in range(k)]
        self.firsts: list[Choice | None] = [None] * k  # each reply's first answer from the shared n = K request
        self.shared = Chunks()  # that request's chunks as they come
        self.flight: list[Chunks | None] = [None] * k  # each reply's own request under way
        self.owed = [True] * k  # its first answer not yet in its step
        self.lock = threading.Lock()
        self.abandoned = False  # Ctrl-C: no request is started, none goes on


class RemotePolicy:
    """StepLM over `/v1/completions`: K candidates as `n = K`, or K concurrent requests where `n` is ignored."""

    def __init__(self, server: CompletionServer, prompt_format: PromptFormat, sampling: Sampling, *, thinks: bool,
                 model: str | None = None, max_reply_tokens: int | None = None,
                 history: Sequence[Message] = (), n_ctx: int | None = None) -> None:
        self.server = server
        self.format = prompt_format
        self.sampling = sampling
        self.thinks = thinks
        self.model = model
        self.max_reply_tokens = max_reply_tokens or sampling.max_tokens
        self.n_ctx = n_ctx  # the server's context (prompt + completion) when it says it: no request asks past it
        self.history = list(history)
        self.counters = EngineCounters()
        self.n_supported: bool | None = None  # None until a request with n > 1 has shown it
        self.top_logprobs: int = TOP_LOGPROBS
        self._branches: dict[int, _Branch] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._rng = random.Random(sampling.seed if sampling.seed is not None else random.randrange(2**31))

    # -- StepLM ----------------------------------------------------------------------------------------------
    @property
    def stats(self) -> LMStats:
        c = self.counters
        evaluated = c.evaluated_prompt_tokens if c.evaluated_prompt_tokens is not None else c.prompt_tokens
        return LMStats(generated_tokens=c.generated_tokens, evaluated_tokens=evaluated + c.generated_tokens,
                       peak_kv_tokens=c.peak_request_tokens)

    def prompt_text(self, question: str) -> str:
        text = self.format.render_chat([*self.history, Message("user", question)])
        if self.thinks and not text.endswith(OPEN_LINE):
            text += OPEN_LINE
        return self._without_bos(text)

    def prompt_tokens(self, question: str) -> list[int]:
        """Stand-ins for the prompt's tokens (a solve reports only how many there are)."""
        return list(range(self.format.count_tokens(self.prompt_text(question)) + (1 if self.format.added_bos else 0)))

    def count_tokens(self, text: str) -> int:
        return self.format.count_tokens(text)

    def open(self, question: str) -> int:
        return self.open_text(self.prompt_text(question))

    def open_text(self, prompt: str) -> int:
        """A root branch from a ready prompt text (benchmarks)."""
        text = self._without_bos(prompt)
        counted = self.format.count_tokens(text) + (1 if self.format.added_bos else 0) if self.n_ctx else 0
        return self._handle(_Branch(text, in_think=self.thinks, reply_tokens=0, prompt_tokens=counted))

    def release(self, branch: int) -> None:
        self._branches.pop(branch, None)

    def close(self) -> None:
        self._branches.clear()

    def sample(self, branch: int, k: int, stop: StepStop) -> list[Candidate]:
        parent = self._branches[branch]
        seeds = [self._rng.randrange(2**31) for _ in range(k)]
        replies = _Replies(k, parent)
        try:
            if k > 1 and self.n_supported is not False:
                self._ask_shared(parent, stop, k, seeds[0], replies.firsts, replies.shared)
            self._map(lambda i: self._grow(parent, stop, seeds[i], replies, i), range(k))
        except KeyboardInterrupt:  # Ctrl-C: every reply as far as it got, for a best-so-far answer (as local)
            raise Interrupted([[self._child(parent, step) for step in self._abandon(replies)]]) from None
        return [self._child(parent, step) for step in replies.steps]

    def _abandon(self, replies: _Replies) -> list[_Step]:
        """Each reply as far as it got (its step and what its request under way streamed), and every request
        still running told to stop (its stream closed at the next chunk: the server stops generating)."""
        # A thread may hold the lock while it asks a stalled server to count tokens: Ctrl-C does not wait on it.
        locked = replies.lock.acquire(timeout=1.0)
        try:
            replies.abandoned = True
            so_far = []
            for i, step in enumerate(replies.steps):
                flight = replies.flight[i]
                if flight is not None:
                    partial = self._streamed(flight, 0)
                elif replies.owed[i]:  # its first answer, from the shared request, is not in its step yet
                    partial = replies.firsts[i] or self._streamed(replies.shared, i)
                else:
                    partial = None
                so_far.append(self._so_far(step, partial))
            for chunks in [replies.shared, *replies.flight]:
                if chunks is not None:
                    chunks.abandoned = True
        finally:
            if locked:
                replies.lock.release()
        return so_far

    def _ask_shared(self, parent: _Branch, stop: StepStop, k: int, seed: int, firsts: list[Choice | None],
                    into: Chunks) -> None:
        """The first answer of all K replies in one request with n = K, where the server honours n."""
        body = self._body(parent, _Step(parent.in_think, parent.reply_tokens), stop, n=k, seed=seed)
        if body is None:
            return
        try:
            reply = self._complete(body, into)
        except EngineReplyError:
            if self.n_supported:
                raise
            self.n_supported = False  # a server that refuses n > 1 outright is asked one choice at a time
            return
        self.n_supported = len(reply.choices) >= k
        for i, choice in enumerate(reply.choices[:k]):
            firsts[i] = choice
        generated = sum(len(c.tokens) if c.tokens is not None else 0 for c in reply.choices)
        self._count(reply.usage, max(generated, reply.usage.completion_tokens))

    def _child(self, parent: _Branch, step: _Step) -> Candidate:
        child = _Branch(parent.text + step.text, step.in_think, step.reply_tokens, parent.prompt_tokens)
        return Candidate(
            text=step.text, branch=self._handle(child), n_tokens=step.n_tokens, finished=step.finished,
            logprob=sum(step.logprobs), token_logprobs=step.logprobs, token_confidences=step.confidences,
        )

    def _streamed(self, chunks: Chunks, index: int) -> Choice | None:
        """What a request under way has streamed of choice `index` so far (None for nothing, or nonsense)."""
        raw = chunks.snapshot(index)
        if raw is None or not raw.get("text"):
            return None
        try:
            return parse_completion({"choices": [raw]}, self.server.url).choices[0]
        except EngineReplyError:
            return None

    def _so_far(self, step: _Step, partial: Choice | None) -> _Step:
        """A copy of `step` with the text of a request under way (its tokens counted from its log-probs, none where
        the server gives none: nothing is asked of a server that may be the one stalling)."""
        copy = replace(step, logprobs=list(step.logprobs), confidences=list(step.confidences), finished=False)
        if partial is not None:
            self._add(copy, partial.text, partial, len(partial.tokens) if partial.tokens is not None else 0)
        return copy

    def yes_probability(self, prompt: str) -> float:
        """P(Yes) / (P(Yes) + P(No)) from the log-probs of the reply's first token, with thinking skipped."""
        text = self.format.render_chat([Message("user", prompt)])
        if self.thinks:
            text += "" if text.endswith(OPEN_LINE) else OPEN_LINE
            text += f"\n{CLOSE}\n\n"
        text = self._without_bos(text)
        body = {"prompt": text, "max_tokens": 1, "temperature": 0.0, "n": 1, "logprobs": self.top_logprobs}
        choice = self._complete(self._with_model(body)).choices[0]
        top = choice.top_logprobs[0] if choice.top_logprobs else {}
        if not top:
            raise EngineReplyError(f"the engine at {self.server.url} gave no log-probs, which self-eval needs; "
                                   "score with --scorer rules")
        yes, no = top.get("Yes"), top.get("No")
        if yes is None and no is None:
            return 0.5
        floor = min(top.values())  # a word outside the top-k is at most as likely as the least of them
        a, b = (yes if yes is not None else floor), (no if no is not None else floor)
        m = max(a, b)
        return math.exp(a - m) / (math.exp(a - m) + math.exp(b - m))

    # -- requests --------------------------------------------------------------------------------------------
    def _handle(self, branch: _Branch) -> int:
        with self._lock:
            handle = self._next
            self._next += 1
        self._branches[handle] = branch
        return handle

    def _without_bos(self, text: str) -> str:
        """The server adds BOS itself as its tokenizer says; a template that writes it would double it."""
        bos = self.format.added_bos
        return text[len(bos):] if bos and text.startswith(bos) else text

    def _map(self, fn: Any, items: range) -> list[Any]:
        if len(items) == 1:
            return [fn(items[0])]
        return _in_threads(fn, items, MAX_PARALLEL)

    def _with_model(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.model:
            body["model"] = self.model
        return body

    def _body(self, parent: _Branch, step: _Step, stop: StepStop, *, n: int, seed: int) -> dict[str, Any] | None:
        """The request that continues `step` from `parent`, or None when the step has no tokens left."""
        budget = min(stop.max_tokens - step.n_tokens, self.max_reply_tokens - step.reply_tokens)
        if self.n_ctx is not None:  # vLLM refuses a request past its max_model_len with a 400
            budget = min(budget, self._room(parent, step))
        if budget < 1:
            return None
        s = self.sampling
        body: dict[str, Any] = {
            "prompt": parent.text + step.text, "max_tokens": budget, "n": n, "temperature": s.temperature,
            "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p, "repeat_penalty": s.repeat_penalty,
            "presence_penalty": s.presence_penalty, "seed": seed,
            "logprobs": self.top_logprobs, "cache_prompt": True,  # llama-server's prefix cache; others ignore it
        }
        if s.repeat_penalty != 1.0:  # vLLM's name for it (it ignores llama.cpp's)
            body["repetition_penalty"] = s.repeat_penalty
        if self._delimits(step, stop):
            body["stop"] = [stop.delimiter]
        return self._with_model(body)

    def _room(self, parent: _Branch, step: _Step) -> int:
        """Tokens the server's context has left after the branch's prompt and the reply so far (counted, not
        tokenized again at every request)."""
        assert self.n_ctx is not None
        return self.n_ctx - parent.prompt_tokens - step.reply_tokens

    def _delimits(self, step: _Step, stop: StepStop) -> bool:
        return stop.delimiter is not None and (step.in_think or not self.thinks)

    def _complete(self, body: dict[str, Any], into: Chunks | None = None) -> Completion:
        try:
            return self.server.complete(body, into)
        except EngineReplyError as exc:
            if "logprob" not in exc.message.lower() or not body.get("logprobs"):
                raise
        # A server that caps log-probs (OpenAI's limit is 5) or has none: ask for fewer, then none.
        self.top_logprobs = 5 if body["logprobs"] > 5 else 0
        if self.top_logprobs:
            body["logprobs"] = self.top_logprobs
        else:
            body.pop("logprobs")
        return self._complete(body, into)

    def _count(self, usage: Usage, generated: int) -> None:
        with self._lock:
            c = self.counters
            c.requests += 1
            c.generated_tokens += generated
            c.prompt_tokens += usage.prompt_tokens
            if usage.evaluated_prompt_tokens is not None:
                c.evaluated_prompt_tokens = (c.evaluated_prompt_tokens or 0) + usage.evaluated_prompt_tokens
            c.peak_request_tokens = max(c.peak_request_tokens, usage.prompt_tokens + usage.completion_tokens)

    # -- growing one step ------------------------------------------------------------------------------------
    def _grow(self, parent: _Branch, stop: StepStop, seed: int, replies: _Replies, i: int) -> None:
        """Grow reply `i`'s step: its first answer from the shared n = K request or a fresh one, continued until
        it ends. What it has streamed is always either in `replies.flight[i]` or in its step (a Ctrl-C reads one)."""
        step = replies.steps[i]
        choice = replies.firsts[i]
        while not step.ended and not replies.abandoned:
            if choice is None:
                body = self._body(parent, step, stop, n=1, seed=seed)
                if body is None:  # the reply's tokens are spent, or the step's, or the server's context
                    step.ended = True
                    step.finished = step.reply_tokens >= self.max_reply_tokens or (
                        self.n_ctx is not None and self._room(parent, step) < 1)
                    break
                seed = (seed * 1103515245 + 12345) % 2**31  # a continuation samples afresh
                with replies.lock:
                    if replies.abandoned:
                        return
                    replies.flight[i] = Chunks()
                reply = self._complete(body, replies.flight[i])
                choice = reply.choices[0]
                self._count(reply.usage, max(len(choice.tokens or ()), reply.usage.completion_tokens))
                delimited = "stop" in body
            else:
                delimited = self._delimits(step, stop)
            with replies.lock:  # the answer moves from the request under way into the step in one go
                if replies.abandoned:
                    return
                self._take(step, choice, stop, delimited)
                replies.flight[i] = None
                replies.owed[i] = False
            choice = None
        with replies.lock:
            replies.owed[i] = False

    def _take(self, step: _Step, choice: Choice, stop: StepStop, delimited: bool) -> None:
        """Add one answer to the step and decide whether the step (or the reply) has ended."""
        text = choice.text
        tokens = choice.tokens
        n_tokens = len(tokens) if tokens is not None else self.format.count_tokens(text)
        hit_stop = False
        if choice.finish_reason == "stop" and delimited:
            if choice.stopped_at_string is not None:  # the server names the stop string (vLLM)
                hit_stop = choice.stopped_at_string
            elif choice.token_ids is not None:  # llama-server: EOS is the last token; a stop string's are cut off
                hit_stop = self._not_eog(choice.token_ids, tokens or [])
            elif tokens is not None:  # the sampled tokens run on past the text into the stop string
                hit_stop = (stop.delimiter or "") in "".join(tokens)[len(text):]
            else:  # no way to tell EOS from the stop string: a step with tokens ended at the delimiter
                hit_stop = n_tokens > 0
        eos = choice.finish_reason == "stop" and not hit_stop
        if step.in_think:
            whole = step.text + text
            at = whole.find(CLOSE, max(0, len(step.text) - len(CLOSE) + 1))
            if at >= 0:
                step.in_think = False
                if stop.delimiter is not None:  # the step ends right after </think>, as on the local engine
                    cut = at + len(CLOSE) - len(step.text)
                    n_tokens = _tokens_in(tokens, cut) if tokens is not None else self.format.count_tokens(text[:cut])
                    text, tokens, hit_stop, eos = text[:cut], (tokens or [])[:n_tokens], False, False
                    step.ended = True
        self._add(step, text, choice, n_tokens)
        if eos:
            step.finished = step.ended = True
        elif hit_stop:
            step.text += stop.delimiter or ""
            if step.n_tokens >= stop.min_tokens and (stop.delimiter or "") in step.text.lstrip():
                step.ended = True
        elif choice.finish_reason == "length" or n_tokens == 0:
            step.ended = True
        if step.reply_tokens >= self.max_reply_tokens:
            step.ended = step.finished = True
        if step.n_tokens >= stop.max_tokens:
            step.ended = True
        if not step.ended and choice.finish_reason not in ("stop", "length"):
            raise EngineReplyError(f"the engine at {self.server.url} ended a completion with finish_reason "
                                   f"{choice.finish_reason!r}")

    def _not_eog(self, token_ids: list[int], tokens: list[str]) -> bool:
        """Whether a reply that llama-server ended with "stop" ended at the stop string rather than at EOS: an end
        token is kept as the last log-prob entry (its text empty), a stop string's tokens are cut off."""
        is_eog = getattr(self.format, "is_eog", None)  # a GGUF's vocabulary has it, and llama-server's /props
        if is_eog is not None:
            return not (token_ids and is_eog(token_ids[-1]))
        # No way to spell the tokens: an entry without text is taken for the end token. A token held back as the
        # start of the stop string ("\n" before "\n") has no text either, and then ends its path early.
        return not tokens or tokens[-1] != ""

    def _add(self, step: _Step, text: str, choice: Choice, n_tokens: int) -> None:
        step.text += text
        step.n_tokens += n_tokens
        step.reply_tokens += n_tokens
        if choice.token_logprobs is not None:
            step.logprobs.extend(choice.token_logprobs[:n_tokens])
        if choice.top_logprobs is not None:
            k = max(self.top_logprobs, 1)
            for top in choice.top_logprobs[:n_tokens]:
                best = sorted(top.values(), reverse=True)[:k]
                step.confidences.append(-sum(best) / len(best) if best else 0.0)


def _in_threads(fn: Callable[[int], T], items: range, limit: int) -> list[T]:
    """`fn` over `items` on at most `limit` daemon threads, the results in order; the first error is raised.

    Daemon threads, not a ThreadPoolExecutor: a Ctrl-C, raised in the caller's thread, ends qwq at once, where
    the executor's workers are joined at exit and would hold it until their requests to a stalled engine time out.
    """
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    pending = iter(range(len(items)))
    lock = threading.Lock()

    def work() -> None:
        while not errors:
            with lock:
                i = next(pending, None)
            if i is None:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                errors.append(exc)

    threads = [threading.Thread(target=work, name="qwq-remote", daemon=True) for _ in range(min(limit, len(items)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.1)  # a join with a timeout lets Ctrl-C through
    if errors:
        raise errors[0]
    return results


def _tokens_in(tokens: list[str], chars: int) -> int:
    """How many of the sampled tokens it takes to cover the first `chars` characters of their text."""
    used = 0
    for i, token in enumerate(tokens):
        if used >= chars:
            return i
        used += len(token)
    return len(tokens)
