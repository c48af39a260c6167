"""Multi-sequence KV tree on llama.cpp: fork, batched extend, prune, park; each token evaluated once."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Sequence

import llama_cpp
import numpy as np

from qwq_local.engine.model import LoadedModel
from qwq_local.engine.native import ContextSpec, NativeContext
from qwq_local.errors import OutOfMemoryError, QwqError


@dataclass(eq=False)
class Span:
    """A run of tokens whose KV cells are shared by every resident branch that contains it."""

    n_tokens: int
    parent: "Span | None"
    refs: int = 0


@dataclass(eq=False)
class Branch:
    """One path through the tree: its tokens, its sequence id while resident, and its last outputs."""

    id: int
    tokens: list[int]
    seq: int | None = None  # llama.cpp sequence id while its cells are in the KV cache
    span: Span | None = None  # tip of its span chain while resident
    logits: np.ndarray | None = None  # next-token logits after its last token
    hidden: np.ndarray | None = None  # hidden state at its last token (when the tree keeps them)
    hidden_mean: np.ndarray | None = None  # mean hidden state over the tokens of its last step
    mid: np.ndarray | None = None  # a middle layer's state at its last token (with the tree's tap_layer)
    mid_mean: np.ndarray | None = None  # ... and its mean over the last step's tokens
    pool: np.ndarray | None = None  # sum of the states of the step under way, [last layer | tap layer]
    pooled: int = 0  # how many tokens that sum holds
    parked: bytes | None = None  # sequence state saved in host RAM while evicted
    last_used: int = 0
    alive: bool = True

    @property
    def n_past(self) -> int:
        return len(self.tokens)


@dataclass
class TreeStats:
    """Counters for the honest recompute ratio and memory figures."""

    evaluated_tokens: int = 0  # tokens submitted to llama_decode
    decode_calls: int = 0
    distinct_tokens: int = 0  # tokens that entered the tree (each counted once)
    live_cells: int = 0
    peak_cells: int = 0
    parked: int = 0
    restored: int = 0
    recomputed_tokens: int = 0
    parked_bytes_peak: int = 0


class KVBudgetError(QwqError):
    """The KV budget cannot hold even the branches a single step needs."""

    exit_code = OutOfMemoryError.exit_code


class KVRoomError(KVBudgetError):
    """No room for this batch right now; raised before anything is decoded, so fewer rows may be retried."""


@dataclass
class SamplerSpec:
    """The QwQ sampler chain for one branch: top_k, top_p, min_p, temperature, seeded dist."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.0
    seed: int = 0
    repeat_penalty: float = 1.0  # llama.cpp's repetition penalty over the last `penalty_last_n` tokens; 1 is off
    presence_penalty: float = 0.0  # subtracted from the logit of each token already among them; 0 is off
    penalty_last_n: int = 64  # llama.cpp's default window

    @property
    def penalises(self) -> bool:
        return self.repeat_penalty != 1.0 or self.presence_penalty != 0.0


class NativeSampler:
    """A llama.cpp sampler chain; samples from the context's batch rows or from stored logits."""

    def __init__(self, spec: SamplerSpec, n_vocab: int) -> None:
        params = llama_cpp.llama_sampler_chain_default_params()
        self.chain = llama_cpp.llama_sampler_chain_init(params)
        add = lambda s: llama_cpp.llama_sampler_chain_add(self.chain, s)  # noqa: E731
        if spec.penalises:  # first, as llama.cpp's own chain has it: greedy decoding is penalised too
            add(llama_cpp.llama_sampler_init_penalties(n_vocab, spec.penalty_last_n, spec.repeat_penalty, 0.0,
                                                       spec.presence_penalty))
        if spec.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if spec.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(spec.top_k))
            add(llama_cpp.llama_sampler_init_top_p(spec.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(spec.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(spec.temperature))
            add(llama_cpp.llama_sampler_init_dist(spec.seed & 0xFFFFFFFF))
        self.n_vocab = n_vocab
        self._cand: np.recarray | None = None

    def remember(self, tokens: Sequence[int]) -> None:
        """Count `tokens` as already written (a branch's text before this step), for the penalties."""
        for token in tokens:
            llama_cpp.llama_sampler_accept(self.chain, int(token))

    def from_context(self, ctx: llama_cpp.llama_context_p, row: int) -> int:
        return int(llama_cpp.llama_sampler_sample(self.chain, ctx, row))

    def from_logits(self, logits: np.ndarray) -> int:
        if self._cand is None:
            dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
            self._cand = np.recarray((self.n_vocab,), dtype=dtype)
        cand = self._cand
        cand.id[:] = np.arange(self.n_vocab, dtype=np.intc)
        cand.logit[:] = logits
        cand.p[:] = 0.0
        arr = llama_cpp.llama_token_data_array(
            data=cand.ctypes.data_as(llama_cpp.llama_token_data_p), size=self.n_vocab, selected=-1,
            sorted=False,
        )
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(arr))
        token = int(cand.id[arr.selected]) if arr.selected >= 0 else int(cand.id[0])
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def close(self) -> None:
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

    __del__ = close


class KVTree:
    """Branches of one prompt in a unified multi-sequence KV cache, decoded together in one batch.

    Every token that enters the tree is decoded once: a fork shares its parent's cells
    (llama_memory_seq_cp), `extend` decodes the new tokens of several branches in one
    llama_batch, and `prune` frees a branch's cells. A KV budget (in cells) is never exceeded:
    branches at rest are evicted least-recently-used first, parked in host RAM
    (llama_state_seq_get_data) or dropped to be recomputed from a resident ancestor, whichever
    is cheaper, and brought back before they are used again.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        n_ctx: int = 4096,
        n_seq_max: int = 64,
        kv_budget: int | None = None,
        hidden: bool = False,
        tap_layer: int | None = None,
        n_batch: int = 512,
        n_threads: int | None = None,
        recompute_max_tokens: int = 64,
    ) -> None:
        self.model = model
        self.native = NativeContext(model, ContextSpec(
            n_ctx=n_ctx, n_batch=n_batch, batch_tokens=n_batch, n_seq_max=n_seq_max, embeddings=hidden,
            n_threads=n_threads or model.options.n_threads or model.llama.context_params.n_threads,
            yarn=True, quiet=True, tap_layer=tap_layer if hidden else None))  # llama.cpp logs its set-up
        self.ctx = self.native.ctx
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_batch = n_batch
        self.hidden_enabled = hidden
        self.n_vocab = model.n_vocab
        self.n_embd = model.n_embd
        self.budget = min(kv_budget or self.n_ctx, self.n_ctx)
        self.recompute_max_tokens = recompute_max_tokens
        self.batch = self.native.batch
        self._free_seqs = list(range(n_seq_max - 1, -1, -1))
        self.branches: dict[int, Branch] = {}
        self.stats = TreeStats()
        self._next_id = 0
        self._clock = 0
        self._pinned: set[int] = set()

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        if getattr(self, "native", None) is not None:
            self.native.close()
            self.ctx = self.batch = None

    def __enter__(self) -> "KVTree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- public API
    def root(self, tokens: Sequence[int]) -> Branch:
        """A new branch holding `tokens` (the prompt), decoded in n_batch chunks."""
        branch = self._new_branch([])
        self._make_resident(branch, needed=len(tokens))
        self._decode([(branch, list(tokens))])
        self.stats.distinct_tokens += len(tokens)
        return branch

    def fork(self, parent: Branch) -> Branch:
        """A child sharing the parent's cells; its logits start as the parent's."""
        self._touch(parent)
        self.ensure_resident(parent)
        child = self._new_branch(list(parent.tokens))
        child.seq = self._take_seq()
        llama_cpp.llama_memory_seq_cp(self.mem, parent.seq, child.seq, -1, -1)
        # The parent's tip is sealed; both continue from new spans that share it.
        tip = parent.span
        child.span = Span(0, tip, refs=1)
        parent.span = Span(0, tip, refs=1)
        self._ref_chain(tip, +1)
        child.logits, child.hidden, child.hidden_mean = parent.logits, parent.hidden, parent.hidden_mean
        child.mid, child.mid_mean = parent.mid, parent.mid_mean
        return child

    def extend(self, items: Sequence[tuple[Branch, Sequence[int]]], *, pool: bool = False,
               rest: bool = True) -> None:
        """Decode new tokens for several branches in one batch (chunked if over n_batch).

        `pool`: with hidden states kept, every token's hidden state joins its branch's step mean (a step
        decoded from its text, as a bank's replay does; costs an output row per token). `rest=False`: the
        branches do not end their step here (no logits kept, the step mean goes on).
        """
        work = [(b, list(toks)) for b, toks in items if toks]
        for b, toks in work:
            self._pinned.add(b.id)
        try:
            for b, toks in work:
                self.ensure_resident(b)
            self._reserve(sum(len(t) for _, t in work))
            self._decode(work, keep=None if rest else [False] * len(work), pool=pool)
            self.stats.distinct_tokens += sum(len(t) for _, t in work)
        finally:
            for b, _ in work:
                self._pinned.discard(b.id)

    def prune(self, branch: Branch) -> None:
        """Free the branch: its sequence id and every cell no other branch shares."""
        if not branch.alive:
            return
        self._evict_cells(branch)
        branch.parked = None
        branch.logits = branch.hidden = branch.hidden_mean = branch.mid = branch.mid_mean = branch.pool = None
        branch.alive = False
        self.branches.pop(branch.id, None)

    def truncate(self, branch: Branch, n_tokens: int) -> None:
        """Cut an unshared branch back to its first `n_tokens` tokens (a scratch branch reused
        for prompts that share a prefix); its logits are stale until it is extended."""
        span = branch.span
        cut = branch.n_past - n_tokens
        if cut <= 0:
            return
        if branch.seq is None or span is None or span.parent is not None or span.refs != 1:
            raise ValueError("only a resident, unforked branch can be truncated")
        llama_cpp.llama_memory_seq_rm(self.mem, branch.seq, n_tokens, -1)
        del branch.tokens[n_tokens:]
        span.n_tokens -= cut
        self.stats.live_cells -= cut
        branch.logits = branch.hidden = branch.hidden_mean = branch.mid = branch.mid_mean = branch.pool = None
        branch.pooled = 0

    def resident(self, branch: Branch) -> bool:
        return branch.seq is not None

    # ----------------------------------------------------------------- decoding
    def step_batch(self, rows: Sequence[tuple[Branch, int]], rest: Sequence[bool]) -> None:
        """Decode one token for each branch (the generation loop's batched step).

        Branches flagged in `rest` end their step with this token: their logits and hidden state
        are kept; the others are sampled straight from the batch rows (`row_of`).
        """
        for b, _ in rows:
            self._pinned.add(b.id)
        try:
            for b, _ in rows:
                self.ensure_resident(b)
            self._reserve(len(rows))
            self._decode([(b, [t]) for b, t in rows], keep=rest)
            self.stats.distinct_tokens += len(rows)
        finally:
            for b, _ in rows:
                self._pinned.discard(b.id)

    def row_of(self, branch: Branch) -> int:
        """The batch row holding the branch's last token after the latest decode."""
        return self._rows[branch.id]

    def row_logits(self, branch: Branch) -> np.ndarray:
        """The next-token logits of the branch's batch row (a view, valid until the next decode)."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, self._rows[branch.id])
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _decode(self, work: list[tuple[Branch, list[int]]], keep: Sequence[bool] | None = None,
                pool: bool = False) -> None:
        """Fill llama_batch ourselves (positions per branch) and decode.

        Every branch's last token gets an output row (see `row_of`); branches flagged in `keep`
        (all by default) come to rest: their logits (and hidden state) are copied out.

        With hidden states kept, each row decoded with them adds its hidden state to its branch's running
        sum, and a branch at rest turns that sum into `hidden_mean`, the mean over its step's tokens:
        generation decodes every token of a step so (one row per branch), and `pool` asks it of every row.
        With a tap layer the same goes for that layer's rows (`mid`, `mid_mean`).
        """
        queue = [(b, toks, i) for i, (b, toks) in enumerate(work)]
        # Split into chunks of at most n_batch tokens, never reordering a branch's tokens.
        pending: list[tuple[Branch, int, int, int]] = []  # branch, token, pos, index into work
        for b, toks, wi in queue:
            start = b.n_past
            for j, tok in enumerate(toks):
                pending.append((b, tok, start + j, wi))
            b.tokens.extend(toks)
            b.span.n_tokens += len(toks)
            self._add_live(len(toks))
        last_pos = {b.id: b.n_past - 1 for b, _ in work}
        self._rows: dict[int, int] = {}
        for lo in range(0, len(pending), self.n_batch):
            chunk = pending[lo: lo + self.n_batch]
            batch = self.batch
            for i, (b, tok, pos, _wi) in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = b.seq
                batch.logits[i] = pool or pos == last_pos[b.id]
            batch.n_tokens = len(chunk)
            # Hidden states make llama.cpp output every row of a batch: ask for them only when
            # every row is a branch's last token (generation steps) or `pool` asks, never for a prefill.
            hidden_now = self.hidden_enabled and (pool or all(pos == last_pos[b.id] for b, _, pos, _ in chunk))
            if self.hidden_enabled:
                llama_cpp.llama_set_embeddings(self.ctx, hidden_now)
            if self.native.tap is not None:
                self.native.tap.rows = self.native.tap.error = None
            rc = llama_cpp.llama_decode(self.ctx, batch)
            if rc != 0:
                raise KVBudgetError(f"llama_decode failed with code {rc} (KV cache full?)")
            self.stats.evaluated_tokens += len(chunk)
            self.stats.decode_calls += 1
            tapped = self._tapped(len(chunk)) if hidden_now else None
            for i, (b, _tok, pos, wi) in enumerate(chunk):
                row = None
                if hidden_now:
                    eptr = llama_cpp.llama_get_embeddings_ith(self.ctx, i)
                    row = np.ctypeslib.as_array(eptr, shape=(self.n_embd,)).astype(np.float32)
                    both = row if tapped is None else np.concatenate([row, tapped[i]])
                    b.pool = both.copy() if b.pool is None else b.pool + both
                    b.pooled += 1
                if pos != last_pos[b.id]:
                    continue
                self._rows[b.id] = i
                if keep is not None and not keep[wi]:
                    b.logits = b.hidden = b.hidden_mean = b.mid = b.mid_mean = None
                    continue
                ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
                b.logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
                b.hidden = row
                mean = None if b.pool is None else b.pool / b.pooled
                b.hidden_mean = None if mean is None else mean[:self.n_embd]
                b.mid = None if tapped is None else tapped[i].copy()
                b.mid_mean = None if mean is None or tapped is None else mean[self.n_embd:]
                b.pool, b.pooled = None, 0

    def _tapped(self, n_rows: int) -> np.ndarray | None:
        """The tap layer's rows of the decode just done (None without a tap)."""
        tap = self.native.tap
        if tap is None:
            return None
        if tap.rows is None or len(tap.rows) != n_rows:
            raise KVBudgetError(tap.error or f"layer tap: {0 if tap.rows is None else len(tap.rows)} rows for a "
                                f"{n_rows}-token batch")
        return tap.rows

    # ----------------------------------------------------------------- KV accounting
    def _new_branch(self, tokens: list[int]) -> Branch:
        branch = Branch(id=self._next_id, tokens=tokens)
        self._next_id += 1
        self.branches[branch.id] = branch
        self._touch(branch)
        return branch

    def _touch(self, branch: Branch) -> None:
        self._clock += 1
        branch.last_used = self._clock

    def _add_live(self, n: int) -> None:
        self.stats.live_cells += n
        self.stats.peak_cells = max(self.stats.peak_cells, self.stats.live_cells)
        if self.stats.live_cells > self.budget:
            raise AssertionError("KV budget exceeded")  # _reserve must prevent this

    def _ref_chain(self, span: Span | None, delta: int) -> None:
        while span is not None:
            before = span.refs
            span.refs += delta
            if before == 0 and span.refs > 0:
                self._add_live(span.n_tokens)
            elif before > 0 and span.refs == 0:
                self.stats.live_cells -= span.n_tokens
            span = span.parent

    def _unique_cells(self, branch: Branch) -> int:
        """Cells that only this branch holds (freed if it leaves the cache)."""
        n, span = 0, branch.span
        while span is not None and span.refs == 1:
            n += span.n_tokens
            span = span.parent
        return n

    def _take_seq(self) -> int:
        if not self._free_seqs:
            victim = self._lru_victim(need_cells=False)
            if victim is None:
                raise KVRoomError("too many branches at once for the context's sequences")
            self._evict(victim)
        return self._free_seqs.pop()

    def _make_resident(self, branch: Branch, needed: int) -> None:
        self._reserve(needed)
        branch.seq = self._take_seq()
        branch.span = Span(0, None, refs=1)

    def _reserve(self, n: int) -> None:
        """Evict branches at rest until `n` more cells fit in the budget."""
        while self.stats.live_cells + n > self.budget:
            victim = self._lru_victim()
            if victim is None:
                raise KVRoomError(
                    f"KV budget of {self.budget:,} cells cannot hold the {n:,} new tokens this step needs"
                )
            self._evict(victim)

    def _lru_victim(self, need_cells: bool = True) -> Branch | None:
        best: Branch | None = None
        for b in self.branches.values():
            if b.seq is None or b.id in self._pinned or (need_cells and self._unique_cells(b) == 0):
                continue
            if best is None or b.last_used < best.last_used:
                best = b
        return best

    def _evict(self, branch: Branch) -> None:
        """Take a branch at rest out of the cache: park its state or keep only its tokens."""
        if self._unique_cells(branch) > self.recompute_max_tokens:
            size = llama_cpp.llama_state_seq_get_size(self.ctx, branch.seq)
            buf = (ctypes.c_uint8 * size)()
            written = llama_cpp.llama_state_seq_get_data(self.ctx, buf, size, branch.seq)
            branch.parked = bytes(buf[:written])
            self.stats.parked += 1
            parked_total = sum(len(b.parked or b"") for b in self.branches.values())
            self.stats.parked_bytes_peak = max(self.stats.parked_bytes_peak, parked_total)
        self._evict_cells(branch)

    def _evict_cells(self, branch: Branch) -> None:
        if branch.seq is None:
            return
        llama_cpp.llama_memory_seq_rm(self.mem, branch.seq, -1, -1)
        self._free_seqs.append(branch.seq)
        branch.seq = None
        self._ref_chain(branch.span, -1)
        branch.span = None

    def ensure_resident(self, branch: Branch) -> None:
        """Bring an evicted branch back: restore its parked state or recompute its suffix."""
        if branch.seq is not None:
            return
        self._pinned.add(branch.id)
        try:
            donor, shared = self._best_donor(branch)
            recompute = branch.n_past - shared
            if (branch.parked is not None and recompute > self.recompute_max_tokens
                    and branch.n_past <= self.budget):
                self._restore_parked(branch)
            else:
                self._recompute(branch, donor, shared)
        finally:
            self._pinned.discard(branch.id)

    def _best_donor(self, branch: Branch) -> tuple[Branch | None, int]:
        best, best_n = None, 0
        for b in self.branches.values():
            if b.seq is None or b is branch:
                continue
            n = 0
            for x, y in zip(b.tokens, branch.tokens):
                if x != y:
                    break
                n += 1
            n = min(n, branch.n_past - 1)
            if n > best_n:
                best, best_n = b, n
        return best, best_n

    def _restore_parked(self, branch: Branch) -> None:
        self._reserve(branch.n_past)
        seq = self._take_seq()
        data = branch.parked or b""
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        read = llama_cpp.llama_state_seq_set_data(self.ctx, buf, len(data), seq)
        if read == 0:
            self._free_seqs.append(seq)
            raise KVBudgetError("could not restore a parked branch into the KV cache")
        branch.seq = seq
        branch.span = Span(branch.n_past, None, refs=0)
        self._ref_chain(branch.span, +1)
        branch.parked = None
        self.stats.restored += 1

    def _recompute(self, branch: Branch, donor: Branch | None, shared: int) -> None:
        tokens = branch.tokens
        kept = (branch.logits, branch.hidden, branch.hidden_mean, branch.mid, branch.mid_mean, branch.pool,
                branch.pooled)
        suffix = tokens[shared:]
        self._reserve(len(suffix))
        seq = self._take_seq()
        branch.tokens = list(tokens[:shared])
        if donor is not None and shared:
            llama_cpp.llama_memory_seq_cp(self.mem, donor.seq, seq, 0, shared)
            donor_tip = donor.span
            # Attribute the shared cells to the donor's chain: the branch's new span hangs off it.
            branch.span = Span(0, _span_at(donor, shared) or donor_tip, refs=1)
            self._ref_chain(branch.span.parent, +1)
        else:
            branch.span = Span(0, None, refs=1)
        branch.seq = seq
        self._decode([(branch, suffix)])
        self.stats.recomputed_tokens += len(suffix)
        (branch.logits, branch.hidden, branch.hidden_mean, branch.mid, branch.mid_mean, branch.pool,
         branch.pooled) = kept
        branch.parked = None


def _span_at(branch: Branch, n_tokens: int) -> Span | None:
    """The donor's span that ends exactly at `n_tokens`, if the chain has one."""
    spans: list[Span] = []
    span = branch.span
    while span is not None:
        spans.append(span)
        span = span.parent
    total = 0
    for s in reversed(spans):
        total += s.n_tokens
        if total == n_tokens:
            return s
    return None


def hidden_states(model: LoadedModel, tokens: Sequence[int], split: int = 0) -> np.ndarray:
    """Hidden states of tokens[split:] from a separate embedding pass (shape n x n_embd).

    tokens[:split] are decoded first as their own batch: llama.cpp's CPU kernels round
    differently for different batch shapes, so a comparison holds the chunking equal.
    """
    native = NativeContext(model, ContextSpec(n_ctx=max(len(tokens), 64), n_batch=max(len(tokens), 64),
                                              batch_tokens=len(tokens), embeddings=True))
    ctx, batch = native.ctx, native.batch
    try:
        rows: list[np.ndarray] = []
        for lo, hi in ((0, split), (split, len(tokens))):
            if hi <= lo:
                continue
            for i, tok in enumerate(tokens[lo:hi]):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, lo + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            batch.n_tokens = hi - lo
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise KVBudgetError("embedding pass failed")
            if lo >= split:
                rows += [np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(ctx, i),
                                               shape=(model.n_embd,)).copy() for i in range(hi - lo)]
        return np.stack(rows)
    finally:
        native.close()
