"""`qwq bench engine --engine URL`: the synthetic search of the KV-tree benchmark, run on a remote engine.

What the server is sent and what it says it evaluated, against the tokens of the search tree: the remote
recompute ratio, beside the local KV tree's on the same shape and prompt.
"""

from __future__ import annotations

import re
import time
from typing import Any

from qwq_local.bench.engine_bench import FILLER, SearchShape, synthetic_search
from qwq_local.config import Sampling
from qwq_local.dialog.messages import Message
from qwq_local.engine.remote import RemotePolicy
from qwq_local.engine.remote_client import CompletionServer

# Prometheus counters of prompt tokens evaluated, and of those a prefix cache served, as each server names them.
PROMPT_COUNTERS = ("vllm:prompt_tokens_total", "llamacpp:prompt_tokens_total")
CACHE_HIT_COUNTERS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")


def synthetic_prompt_text(vocab: Any, n_tokens: int) -> str:
    """The benchmark's chat prompt of about `n_tokens` tokens, as text (the server tokenizes it)."""
    overhead = vocab.count_tokens(vocab.render_chat([Message("user", "")]))
    words = (FILLER * (n_tokens // 20 + 2)).split(" ")
    body = ""
    for word in words:
        if vocab.count_tokens(body + word + " ") > max(n_tokens - overhead, 1):
            break
        body += word + " "
    return vocab.render_chat([Message("user", body.strip())])


def server_counters(server: CompletionServer) -> dict[str, float]:
    """The server's own token counters from `/metrics` (vLLM; llama-server started with --metrics), if any."""
    text = server.text("/metrics")
    if text is None:
        return {}
    found: dict[str, float] = {}
    for name in PROMPT_COUNTERS + CACHE_HIT_COUNTERS:
        values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})?\s+([0-9.eE+]+)\s*$", text, re.MULTILINE)
        if values:
            found[name] = sum(float(v) for v in values)
    return found


def run_remote_search(server: CompletionServer, vocab: Any, shape: SearchShape, sampling: Sampling,
                      model: str | None = None) -> dict[str, Any]:
    """The synthetic search on the remote engine: K children per expansion, each request carrying its whole prefix."""
    prompt = synthetic_prompt_text(vocab, shape.prompt_tokens)
    policy = RemotePolicy(server, vocab, sampling, thinks=False, model=model, max_reply_tokens=10**6)
    before = server_counters(server)
    start = time.perf_counter()
    try:
        synthetic_search(policy, policy.open_text(prompt), shape)
    finally:
        policy.close()
    seconds = time.perf_counter() - start
    after = server_counters(server)
    c = policy.counters
    distinct = vocab.count_tokens(prompt) + (1 if vocab.added_bos else 0) + c.generated_tokens
    sent = c.prompt_tokens + c.generated_tokens
    evaluated = None
    if c.evaluated_prompt_tokens is not None:
        evaluated = c.evaluated_prompt_tokens + c.generated_tokens
    else:
        prompt_name = next((n for n in PROMPT_COUNTERS if n in after), None)
        if prompt_name is not None:
            hits = next((after[n] - before.get(n, 0.0) for n in CACHE_HIT_COUNTERS if n in after), 0.0)
            evaluated = int(after[prompt_name] - before.get(prompt_name, 0.0) - hits) + c.generated_tokens
    return {
        "seconds": round(seconds, 2),
        "requests": c.requests,
        "n_gt_1": policy.n_supported,
        "sent_tokens": sent,  # prompt tokens sent + generated: what a server without a prefix cache evaluates
        "server_evaluated_tokens": evaluated,  # what the server says it evaluated (None: it does not say)
        "distinct_tokens": distinct,
        "recompute_ratio_without_cache": round(sent / distinct, 4),
        "recompute_ratio": round(evaluated / distinct, 4) if evaluated is not None else None,
        "generated_tokens": c.generated_tokens,
    }


def bench_remote(settings: Any, model_name: str, vocab: Any, shape: SearchShape, seed: int = 1) -> dict[str, Any]:
    """The remote row of `qwq bench engine --engine`, with the sampling the local rows use."""
    sampling = Sampling(temperature=0.6, top_p=0.95, top_k=40, min_p=0.0, seed=seed)
    with CompletionServer(settings.engine, settings.api_key, timeout=settings.engine_timeout) as server:
        models = server.models()
        name = next((m for m in models if model_name.lower() in m.lower()), models[0] if models else None)
        row = run_remote_search(server, vocab, shape, sampling, model=name)
        row["url"] = server.url
        return row
