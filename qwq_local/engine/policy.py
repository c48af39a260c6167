"""The search core's StepLM protocol on the KV tree: batched step sampling with per-branch stops."""

from __future__ import annotations

import codecs
import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from qwq_local.config import Sampling
from qwq_local.dialog.messages import Message
from qwq_local.dialog.think import CLOSE, OPEN_LINE
from qwq_local.engine.kvtree import Branch, KVRoomError, KVTree, NativeSampler, SamplerSpec
from qwq_local.engine.model import LoadedModel
from qwq_local.search.protocol import Candidate, Interrupted, LMStats, StepStop


@dataclass
class _State:
    """A branch handed to the search, with where its reply stands."""

    branch: Branch
    in_think: bool
    reply_tokens: int
    think_tokens: int = 0  # of them inside <think>


@dataclass
class _Child:
    state: _State
    sampler: NativeSampler
    decoder: "codecs.IncrementalDecoder"
    pending: int = -1
    pending_stats: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    stats: list[tuple[float, float, float, float]] = field(default_factory=list)  # per token, see token_stats
    text: list[str] = field(default_factory=list)
    n_tokens: int = 0
    ending: bool = False
    finished: bool = False  # EOS sampled
    flush: bool = False  # decode the EOS too, for the hidden state at the reply's end
    at_limit: bool = False  # the whole reply reached its token limit
    forced: list[int] = field(default_factory=list)  # tokens to write next instead of sampling (closing the thinking)


TOP_K_CONFIDENCE = 20  # DeepConf's k: a token's confidence is -mean log-prob of the k likeliest tokens


def log_partition(logits: np.ndarray) -> float:
    """log sum exp(logits): a token's log-prob (T = 1) is its logit less this."""
    top = float(logits.max())
    return top + math.log(float(np.exp(logits - top).sum()))


def token_stats(logits: np.ndarray, token: int, k: int = TOP_K_CONFIDENCE) -> tuple[float, float, float, float]:
    """The sampled token's log-prob, DeepConf confidence, top-k entropy and self-certainty under `logits` (T = 1)."""
    x = np.asarray(logits, dtype=np.float32)
    lse = log_partition(x)
    best = np.partition(x, -k)[-k:]
    p = np.exp(best - best.max())
    p /= p.sum()
    entropy = float(-(p * np.log(np.maximum(p, 1e-30))).sum())
    certainty = lse - float(x.mean()) - math.log(x.size)
    return float(x[token]) - lse, lse - float(best.mean()), entropy, certainty


class TreePolicy:
    """StepLM over a KVTree: `sample` forks K children and decodes them together, one batch per token."""

    def __init__(
        self,
        model: LoadedModel,
        tree: KVTree,
        sampling: Sampling,
        *,
        thinks: bool,
        max_reply_tokens: int | None = None,
        history: list[Message] | None = None,
        think_budget: int | None = None,
    ) -> None:
        self.model = model
        self.tree = tree
        self.sampling = sampling
        self.thinks = thinks
        self.max_reply_tokens = max_reply_tokens or sampling.max_tokens
        self._states: dict[int, _State] = {}
        self._next = 0
        self._rng = random.Random(sampling.seed if sampling.seed is not None else random.randrange(2**31))
        self._generated = 0
        self._judge: Branch | None = None
        self.history = list(history or [])  # earlier turns (final answers only) before each question
        self.think_budget = think_budget  # tokens a path may think before its </think> is written for it
        self._close_tokens: list[int] | None = None

    @property
    def stats(self) -> LMStats:
        return LMStats(
            generated_tokens=self._generated,
            evaluated_tokens=self.tree.stats.evaluated_tokens,
            peak_kv_tokens=self.tree.stats.peak_cells,
        )

    def _handle(self, state: _State) -> int:
        handle = self._next
        self._next += 1
        self._states[handle] = state
        return handle

    def prompt_tokens(self, question: str) -> list[int]:
        text = self.model.render_chat([*self.history, Message("user", question)])
        if self.thinks and not text.endswith(OPEN_LINE):
            text += OPEN_LINE
        return self.model.tokenize(text)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the model would write it (no BOS)."""
        return len(self.model.tokenize(text, bos=False))

    def open(self, question: str) -> int:
        return self.open_tokens(self.prompt_tokens(question))

    def open_tokens(self, tokens: list[int]) -> int:
        """A root branch from ready prompt tokens (benchmarks, rollouts)."""
        root = self.tree.root(tokens)
        return self._handle(_State(root, in_think=self.thinks, reply_tokens=0))

    def release(self, branch: int) -> None:
        state = self._states.pop(branch, None)
        if state is not None:
            self.tree.prune(state.branch)

    def close(self) -> None:
        for handle in list(self._states):
            self.release(handle)
        if self._judge is not None:
            self.tree.prune(self._judge)
            self._judge = None

    def _spec(self) -> SamplerSpec:
        s = self.sampling
        return SamplerSpec(s.temperature, s.top_p, s.top_k, s.min_p, seed=self._rng.randrange(2**32),
                           repeat_penalty=s.repeat_penalty, presence_penalty=s.presence_penalty)

    def sample(self, branch: int, k: int, stop: StepStop) -> list[Candidate]:
        return self.sample_many([(branch, k)], stop)[0]

    def sample_many(self, requests: Sequence[tuple[int, int]], stop: StepStop) -> list[list[Candidate]]:
        """`k` next steps from each `(branch, k)`, every child of every branch decoded in one batch per token."""
        groups: list[list[_Child]] = []
        for branch, k in requests:
            parent = self._states[branch]
            group = []
            for _ in range(k):
                b = self.tree.fork(parent.branch)
                spec = self._spec()
                sampler = NativeSampler(spec, self.tree.n_vocab)
                if spec.penalises:  # the penalties see the path's last tokens, not this step's alone
                    sampler.remember(parent.branch.tokens[-spec.penalty_last_n:])
                child = _Child(_State(b, parent.in_think, parent.reply_tokens, parent.think_tokens), sampler,
                               codecs.getincrementaldecoder("utf-8")(errors="replace"))
                self._close_if_over(child, stop)
                child.pending = child.forced.pop(0) if child.forced else sampler.from_logits(parent.branch.logits)
                child.pending_stats = token_stats(parent.branch.logits, child.pending)
                group.append(child)
            groups.append(group)
        try:
            self._decode([child for group in groups for child in group], stop)
        except KeyboardInterrupt:  # Ctrl-C: every child as far as it got, for a best-so-far answer
            raise Interrupted([[self._candidate(child) for child in group] for group in groups]) from None
        return [[self._candidate(child) for child in group] for group in groups]

    def _decode(self, active: list[_Child], stop: StepStop) -> None:
        """Decode the children one token per batch until every one has ended its step.

        When the KV budget cannot hold every child's next token, the children already in the cache go on and the
        rest wait, their accepted token queued, until one ends and its cells can be parked (vLLM's preemption):
        `n` replies of `max_tokens` each finish in a budget that holds fewer of them at once.
        """
        queued: list[_Child] = []  # accepted a token that no batch has decoded yet
        room: int | None = None  # rows that fit when the budget last ran out; None: try every row
        while active or queued:
            for child in active:
                self._accept(child, stop)
            ready = queued + [c for c in active if not c.finished or c.flush]
            ready.sort(key=lambda c: not self.tree.resident(c.state.branch))  # stable: no reordering when all fit
            decoded = self._step_some(ready, room)
            queued = ready[len(decoded):]
            room = len(decoded) if queued else None
            active = []
            for child in decoded:
                if child.ending or child.finished:
                    room = None  # its cells can make room for a queued child
                    continue
                row = self.tree.row_of(child.state.branch)
                child.pending = child.forced.pop(0) if child.forced else child.sampler.from_context(self.tree.ctx, row)
                child.pending_stats = token_stats(self.tree.row_logits(child.state.branch), child.pending)
                active.append(child)

    def _step_some(self, ready: list[_Child], room: int | None) -> list[_Child]:
        """Decode the pending tokens of as many of `ready` (in order) as the KV budget holds; those decoded."""
        n = len(ready) if room is None else min(room, len(ready))
        while n:
            batch = ready[:n]
            try:
                self.tree.step_batch([(c.state.branch, c.pending) for c in batch], [c.ending for c in batch])
                return batch
            except KVRoomError:
                if n == 1:
                    raise  # one branch alone does not fit with every other branch evicted: waiting frees nothing
                n //= 2
        return []

    def replay(self, branch: int, text: str, *, end: bool) -> Candidate:
        """The step `text` after `branch` as if it had been sampled (a bank's arrays rebuilt from its texts): its
        tokens decoded in one batch, and the end token too when the reply ended there (`end`), as sampling decodes
        it, so that the hidden state is the step's end. Nothing is sampled, so there are no token statistics."""
        parent = self._states[branch]
        tokens = self.model.tokenize(text, bos=False)
        b = self.tree.fork(parent.branch)
        decode = tokens + ([self.model.llama.token_eos()] if end else [])
        self.tree.extend([(b, decode[:-1])], pool=True, rest=False)  # every row joins the step's mean
        self.tree.extend([(b, decode[-1:])])  # alone in its batch, as sampling decodes a step's last token
        state = _State(b, parent.in_think, parent.reply_tokens + len(tokens), parent.think_tokens)
        return Candidate(text=text, branch=self._handle(state), n_tokens=len(tokens), finished=end,
                         hidden=b.hidden, hidden_mean=b.hidden_mean, hidden_mid=b.mid, hidden_mid_mean=b.mid_mean)

    def _candidate(self, child: _Child) -> Candidate:
        child.sampler.close()
        state = child.state
        logprobs, confidences, entropies, certainties = (list(column) for column in zip(*child.stats)) \
            if child.stats else ([], [], [], [])
        return Candidate(
            text="".join(child.text), branch=self._handle(state), n_tokens=child.n_tokens,
            finished=child.finished or child.at_limit, hidden=state.branch.hidden,
            hidden_mean=state.branch.hidden_mean, hidden_mid=state.branch.mid, hidden_mid_mean=state.branch.mid_mean,
            logprob=float(sum(logprobs)),
            token_logprobs=logprobs, token_confidences=confidences, token_entropies=entropies,
            token_certainties=certainties,
        )

    def _accept(self, child: _Child, stop: StepStop) -> None:
        """Take the child's pending token into its step and decide whether the step ends."""
        token = child.pending
        state = child.state
        if self.model.is_eog(token):
            # A Q-value head scores the state where the reply ends: decode the EOS as the step's
            # last token so it has a hidden state like every other step (never sampled past).
            child.finished = True
            child.flush = child.ending = self.tree.hidden_enabled
            return
        piece = child.decoder.decode(self.model.token_bytes(token))
        child.text.append(piece)
        child.stats.append(child.pending_stats)
        child.n_tokens += 1
        state.reply_tokens += 1
        state.think_tokens += state.in_think
        self._generated += 1
        text = "".join(child.text)
        if state.in_think and stop.end_think in text:
            state.in_think = False
            child.ending = stop.delimiter is not None  # a whole-reply sample runs on past </think>
        elif stop.delimiter is not None and (state.in_think or not self.thinks):
            body = text.lstrip()
            if child.n_tokens >= stop.min_tokens and stop.delimiter in body:
                child.ending = True
        if child.n_tokens >= stop.max_tokens:
            child.ending = True
        if state.reply_tokens >= self.max_reply_tokens:
            child.ending = child.at_limit = True
        self._close_if_over(child, stop)

    def _close_if_over(self, child: _Child, stop: StepStop) -> None:
        """Past the thinking budget: the path's next tokens are its </think>, written for it (as --think-budget does
        for a direct reply), so that it goes on to answer."""
        state = child.state
        if self.think_budget is None or not state.in_think or child.forced or state.think_tokens < self.think_budget:
            return
        if self._close_tokens is None:
            self._close_tokens = self.model.tokenize(f"\n{stop.end_think}\n\n", bos=False)
        child.forced = list(self._close_tokens)

    def yes_probability(self, prompt: str) -> float:
        """P(Yes) / (P(Yes) + P(No)) for the first answer token, with thinking skipped.

        Judge prompts share long prefixes (the question, earlier steps): one scratch branch keeps
        the last prompt, is cut back to the common prefix and extended by the rest only.
        """
        text = self.model.render_chat([Message("user", prompt)])
        if self.thinks:
            text += "" if text.endswith(OPEN_LINE) else OPEN_LINE
            text += f"\n{CLOSE}\n\n"
        tokens = self.model.tokenize(text)
        judge = self._judge
        if judge is None or not judge.alive:
            judge = self._judge = self.tree.root(tokens)
        else:
            self.tree.ensure_resident(judge)
            shared = 0
            for a, b in zip(judge.tokens, tokens):
                if a != b:
                    break
                shared += 1
            shared = min(shared, len(tokens) - 1)
            try:
                self.tree.truncate(judge, shared)
                self.tree.extend([(judge, tokens[shared:])])
            except ValueError:  # it came back from eviction sharing cells: start it afresh
                self.tree.prune(judge)
                judge = self._judge = self.tree.root(tokens)
        logits = judge.logits
        yes, no = self._first_token("Yes"), self._first_token("No")
        a, b = float(logits[yes]), float(logits[no])
        m = max(a, b)
        return math.exp(a - m) / (math.exp(a - m) + math.exp(b - m))

    def _first_token(self, word: str) -> int:
        return self.model.tokenize(word, bos=False)[0]
