"""`qwq bench engine` and `qwq bench chat`: the tree engine and the chat path against plain llama.cpp.

Every figure is measured side by side in one run, on the same loaded model, with the same settings.
"""

from __future__ import annotations

import random
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from qwq_local.config import Sampling
from qwq_local.dialog.messages import Message
from qwq_local.engine.chat import LlamaChat
from qwq_local.engine.kvtree import KVTree
from qwq_local.engine.model import LoadedModel
from qwq_local.engine.policy import TreePolicy
from qwq_local.engine.raw import batched_decode_run, create_completion_run, perf_evaluated
from qwq_local.search.protocol import StepStop

FILLER = (
    "A farmer keeps careful records. Each morning he counts the eggs from his hens, writes the number in a "
    "ledger, and sells most of them at the market. Some days the hens lay more, some days fewer. "
)


@dataclass
class SearchShape:
    """The synthetic search: a prompt, then `expansions` pops of a seeded-random open node into
    `branching` children of `step_tokens` tokens each, never deeper than `depth`."""

    prompt_tokens: int = 300
    depth: int = 8
    branching: int = 4
    step_tokens: int = 48
    expansions: int = 8
    seed: int = 7


@dataclass
class EngineReport:
    model: str
    shape: dict[str, int]
    tree: dict[str, Any] = field(default_factory=dict)
    naive: dict[str, Any] = field(default_factory=dict)
    batched: list[dict[str, Any]] = field(default_factory=list)
    wall_ratio_naive_over_tree: float = 0.0
    per_token_ratio_naive_over_tree: float = 0.0  # seconds per generated token, naive / tree
    peak_rss_mib: float = 0.0
    remote: dict[str, Any] = field(default_factory=dict)  # the same search on a remote engine (bench/remote_bench)


def synthetic_prompt(model: LoadedModel, n_tokens: int) -> list[int]:
    """A chat prompt of about `n_tokens` tokens (filler text cut to fit inside the template)."""
    overhead = len(model.tokenize(model.render_chat([Message("user", "")])))
    body = model.tokenize(FILLER * (n_tokens // 20 + 2), bos=False)[: max(n_tokens - overhead, 1)]
    return model.tokenize(model.render_chat([Message("user", model.detokenize(body))]))


def _expansions(shape: SearchShape, open_nodes: list[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    """Pop up to `shape.expansions` seeded-random open nodes above the depth limit from the live list
    (the caller appends children between pops); stop early when every reply has ended."""
    rng = random.Random(shape.seed)
    for _ in range(shape.expansions):
        candidates = [i for i, (depth, _) in enumerate(open_nodes) if depth < shape.depth]
        if not candidates:
            return
        yield open_nodes.pop(rng.choice(candidates))


def synthetic_search(policy: Any, root: int, shape: SearchShape) -> None:
    """The synthetic search from `root` on any StepLM: K children per expansion of a seeded-random open node."""
    open_nodes: list[tuple[int, int]] = [(0, root)]
    stop = StepStop(delimiter=None, max_tokens=shape.step_tokens)
    for depth, node in _expansions(shape, open_nodes):
        children = policy.sample(node, shape.branching, stop)
        policy.release(node)
        for child in children:
            if child.finished:  # an ended reply is not expanded: its cells go back at once
                policy.release(child.branch)
            else:
                open_nodes.append((depth + 1, child.branch))


def run_tree_search(model: LoadedModel, shape: SearchShape, sampling: Sampling, kv_budget: int | None) -> dict:
    """The synthetic search on the KV tree: K children decoded together per expansion."""
    prompt = synthetic_prompt(model, shape.prompt_tokens)
    n_ctx = shape.prompt_tokens + shape.expansions * shape.branching * (shape.step_tokens + 2) + 256
    start = time.perf_counter()
    with KVTree(model, n_ctx=n_ctx, n_seq_max=shape.expansions * shape.branching + 8, kv_budget=kv_budget) as tree:
        policy = TreePolicy(model, tree, sampling, thinks=False, max_reply_tokens=10**6)
        synthetic_search(policy, policy.open_tokens(prompt), shape)
        seconds = time.perf_counter() - start
        stats = tree.stats
        out = {
            "seconds": round(seconds, 2),
            "evaluated_tokens": stats.evaluated_tokens,
            "llama_perf_evaluated": perf_evaluated(tree.ctx),
            "distinct_tokens": stats.distinct_tokens,
            "recompute_ratio": round(stats.evaluated_tokens / stats.distinct_tokens, 4),
            "generated_tokens": policy.stats.generated_tokens,
            "peak_kv_cells": stats.peak_cells,
            "kv_budget": tree.budget,
            "parked": stats.parked,
            "recomputed_tokens": stats.recomputed_tokens,
        }
        policy.close()
    return out


def run_naive_search(model: LoadedModel, shape: SearchShape, sampling: Sampling) -> dict:
    """The same search with the high-level Llama: each child re-prefills its prefix (longest-prefix reuse)."""
    llama = model.llama
    prompt = synthetic_prompt(model, shape.prompt_tokens)
    llama.reset()
    before = perf_evaluated(llama.ctx)
    start = time.perf_counter()
    open_nodes: list[tuple[int, list[int]]] = [(0, prompt)]
    generated = 0
    for depth, prefix in _expansions(shape, open_nodes):
        for _k in range(shape.branching):
            toks: list[int] = []
            finished = False
            for tok in llama.generate(prefix, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
                                      temp=sampling.temperature, repeat_penalty=1.0, reset=True):
                if model.is_eog(tok):
                    finished = True
                    break
                toks.append(tok)
                if len(toks) >= shape.step_tokens:
                    break
            generated += len(toks)
            if not finished:  # as on the tree: a reply that ended is not expanded again
                open_nodes.append((depth + 1, prefix + toks))
    seconds = time.perf_counter() - start
    evaluated = perf_evaluated(llama.ctx) - before
    distinct = len(prompt) + generated  # the prompt, then every generated token once
    return {
        "seconds": round(seconds, 2),
        "evaluated_tokens": evaluated,
        "distinct_tokens": distinct,
        "recompute_ratio": round(evaluated / distinct, 4),
        "generated_tokens": generated,
    }


def run_batched(model: LoadedModel, ks: list[int], steps: int, sampling: Sampling) -> list[dict]:
    """Aggregate tok/s of K sibling branches: tree engine vs raw llama.cpp batched decode, alternating."""
    prompt = synthetic_prompt(model, 128)
    rows = []
    for k in ks:
        tree_rates, raw_rates = [], []
        for rep in range(2):
            raw = batched_decode_run(model, prompt, k, steps, sampling.temperature, seed=rep)
            raw_rates.append(raw.tokens_per_second)
            with KVTree(model, n_ctx=len(prompt) + k * (steps + 2) + 64, n_seq_max=k + 2) as tree:
                policy = TreePolicy(model, tree, sampling, thinks=False, max_reply_tokens=10**6)
                handle = policy.open_tokens(prompt)
                start = time.perf_counter()
                kids = policy.sample(handle, k, StepStop(delimiter=None, max_tokens=steps))
                seconds = time.perf_counter() - start
                tokens = sum(c.n_tokens for c in kids)
                tree_rates.append(tokens / seconds)
                policy.close()
        tree_rate, raw_rate = max(tree_rates), max(raw_rates)
        rows.append({"k": k, "tree_tok_s": round(tree_rate, 1), "raw_tok_s": round(raw_rate, 1),
                     "ratio": round(tree_rate / raw_rate, 3)})
    return rows


def bench_engine(model: LoadedModel, shape: SearchShape = SearchShape(), ks: tuple[int, ...] = (1, 2, 4, 8),
                 steps: int = 48, kv_budget: int | None = None, seed: int = 1) -> EngineReport:
    sampling = Sampling(temperature=0.6, top_p=0.95, top_k=40, min_p=0.0, seed=seed)
    report = EngineReport(model=model.name, shape=asdict(shape))
    report.tree = run_tree_search(model, shape, sampling, kv_budget)
    report.naive = run_naive_search(model, shape, sampling)
    report.wall_ratio_naive_over_tree = round(report.naive["seconds"] / report.tree["seconds"], 2)
    per_tok = lambda d: d["seconds"] / max(d["generated_tokens"], 1)  # noqa: E731
    report.per_token_ratio_naive_over_tree = round(per_tok(report.naive) / per_tok(report.tree), 2)
    report.batched = run_batched(model, list(ks), steps, sampling)
    report.peak_rss_mib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return report


@dataclass
class ChatReport:
    model: str
    max_tokens: int
    qwq_tok_s: float
    llama_cpp_tok_s: float
    ratio: float
    turn2_prompt_tokens: int
    turn2_evaluated_tokens: int
    runs: int


def bench_chat(model: LoadedModel, max_tokens: int = 128, runs: int = 3) -> ChatReport:
    """Decode tok/s of the `qwq solve` path vs `create_completion`, alternating; then a 2nd-turn's prompt eval."""
    chat = LlamaChat(model)
    question = "Write a long, detailed story about a lighthouse keeper and a storm."
    prompt_text = chat.prompt_text([Message("user", question)])
    greedy = Sampling(temperature=0.0, max_tokens=max_tokens, seed=1)
    ours, theirs = [], []
    for _ in range(runs):
        chat.reset()
        chat.complete([Message("user", question)], greedy)
        st = chat.last_stats
        if st.generated_tokens > 1:
            ours.append((st.generated_tokens - 1) / (st.seconds - st.prefill_seconds))
        _, raw = create_completion_run(model, prompt_text, max_tokens, 0.0, 0.95, 40, 0.0, 1)
        if raw.tokens > 1:
            theirs.append((raw.tokens - 1) / raw.seconds)
    chat.reset()
    first = chat.complete([Message("user", "Name three prime numbers.")], Sampling(temperature=0, max_tokens=48))
    chat.complete([Message("user", "Name three prime numbers."), Message("assistant", first),
                   Message("user", "Now name three even numbers.")], Sampling(temperature=0, max_tokens=48))
    st = chat.last_stats
    q, r = statistics.median(ours), statistics.median(theirs)
    return ChatReport(model.name, max_tokens, round(q, 2), round(r, 2), round(q / r, 4),
                      st.prompt_tokens, st.evaluated_prompt_tokens, runs)
