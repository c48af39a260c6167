"""Reference paths on plain llama.cpp, for side-by-side benchmarks: no tree, no search."""

from __future__ import annotations

import time
from dataclasses import dataclass

import llama_cpp

from qwq_local.engine.kvtree import NativeSampler, SamplerSpec
from qwq_local.engine.model import LoadedModel
from qwq_local.engine.native import ContextSpec, NativeContext


@dataclass
class RawRun:
    tokens: int
    seconds: float
    evaluated: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def perf_evaluated(ctx: llama_cpp.llama_context_p) -> int:
    """Tokens llama.cpp evaluated in this context (prompt + generation), from its perf counters."""
    data = llama_cpp.llama_perf_context(ctx)
    return int(data.n_p_eval + data.n_eval)


def create_completion_run(model: LoadedModel, prompt: str, max_tokens: int, temperature: float,
                          top_p: float, top_k: int, min_p: float, seed: int) -> tuple[str, RawRun]:
    """Plain llama-cpp-python `create_completion` with a fresh cache; decode time measured by stream."""
    llama = model.llama
    llama.reset()
    llama.set_seed(seed)
    start = time.perf_counter()
    first = None
    pieces = []
    n = 0
    for chunk in llama.create_completion(prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                         top_k=top_k, min_p=min_p, repeat_penalty=1.0, stream=True,
                                         seed=seed):
        if first is None:
            first = time.perf_counter()
        pieces.append(chunk["choices"][0]["text"])
        n += 1
    end = time.perf_counter()
    return "".join(pieces), RawRun(n, end - (first or start), 0)


def batched_decode_run(model: LoadedModel, prompt_tokens: list[int], k: int, steps: int,
                       temperature: float = 0.6, seed: int = 0) -> RawRun:
    """Raw llama.cpp batched decoding: K sequences share a prompt, one llama_decode per step."""
    native = NativeContext(model, ContextSpec(
        n_ctx=len(prompt_tokens) + k * (steps + 1) + 64, n_batch=max(512, len(prompt_tokens)),
        batch_tokens=max(len(prompt_tokens), k), n_seq_max=max(k, 1), n_threads=model.llama.context_params.n_threads))
    ctx, batch = native.ctx, native.batch
    samplers = [NativeSampler(SamplerSpec(temperature=temperature, seed=seed + i), model.n_vocab) for i in range(k)]
    try:
        for i, tok in enumerate(prompt_tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == len(prompt_tokens) - 1
        batch.n_tokens = len(prompt_tokens)
        llama_cpp.llama_decode(ctx, batch)
        mem = llama_cpp.llama_get_memory(ctx)
        for s in range(1, k):
            llama_cpp.llama_memory_seq_cp(mem, 0, s, -1, -1)
        rows = [len(prompt_tokens) - 1] * k
        pos = len(prompt_tokens)
        start = time.perf_counter()
        for _ in range(steps):
            for s in range(k):
                batch.token[s] = samplers[s].from_context(ctx, rows[s])
                batch.pos[s], batch.n_seq_id[s] = pos, 1
                batch.seq_id[s][0] = s
                batch.logits[s] = True
            batch.n_tokens = k
            llama_cpp.llama_decode(ctx, batch)
            rows = list(range(k))
            pos += 1
        seconds = time.perf_counter() - start
        return RawRun(k * steps, seconds, perf_evaluated(ctx))
    finally:
        for s in samplers:
            s.close()
        native.close()
