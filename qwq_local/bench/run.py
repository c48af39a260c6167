"""Loads models for the benchmarks and prints their tables (or JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer

from qwq_local.app import runtime
from qwq_local.config import Settings


def _load(name: str, settings: Settings, n_ctx: int):
    plan = runtime.plan_model(runtime.locate(name, settings), settings, n_ctx=n_ctx)
    return runtime.load(plan, settings)


def run_engine_bench(settings: Settings, models: list[str], ks: list[int], steps: int,
                     kv_budget: int | None, as_json: bool) -> None:
    from qwq_local.bench.engine_bench import bench_engine

    reports = []
    for name in models:
        model = _load(name, settings, 4096)
        try:
            reports.append(bench_engine(model, ks=tuple(ks), steps=steps, kv_budget=kv_budget))
        finally:
            model.close()
        if settings.engine is not None:  # the same search, prompt and sampling on the remote engine
            from qwq_local.bench.engine_bench import SearchShape
            from qwq_local.bench.remote_bench import bench_remote
            from qwq_local.engine.vocab import GGUFVocab

            plan = runtime.plan_remote(runtime.locate(name, settings), settings)
            with GGUFVocab(plan.resolved.path, plan.info.chat_template) as vocab:
                reports[-1].remote = bench_remote(settings, name, vocab, SearchShape())
        if not as_json:
            typer.echo(format_engine(reports[-1]))
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in reports], indent=2))


def format_engine(r) -> str:
    t, n = r.tree, r.naive
    lines = [
        f"== {r.model}: synthetic search, prompt {r.shape['prompt_tokens']} tok, {r.shape['expansions']} expansions "
        f"x {r.shape['branching']} children x {r.shape['step_tokens']} tok, depth <= {r.shape['depth']}",
        f"{'':14}{'evaluated':>10}{'distinct':>10}{'ratio':>8}{'generated':>11}{'seconds':>9}{'s/1k gen':>10}",
        f"{'KV tree':14}{t['evaluated_tokens']:>10}{t['distinct_tokens']:>10}{t['recompute_ratio']:>8.3f}"
        f"{t['generated_tokens']:>11}{t['seconds']:>9.1f}{1000 * t['seconds'] / max(t['generated_tokens'], 1):>10.1f}",
        f"{'naive Llama':14}{n['evaluated_tokens']:>10}{n['distinct_tokens']:>10}{n['recompute_ratio']:>8.3f}"
        f"{n['generated_tokens']:>11}{n['seconds']:>9.1f}{1000 * n['seconds'] / max(n['generated_tokens'], 1):>10.1f}",
        f"wall naive/tree {r.wall_ratio_naive_over_tree:.2f} · per generated token "
        f"{r.per_token_ratio_naive_over_tree:.2f} · llama.cpp perf count (tree) {t['llama_perf_evaluated']}",
        f"peak KV {t['peak_kv_cells']} / budget {t['kv_budget']} cells · parked {t['parked']} · "
        f"peak RSS {r.peak_rss_mib:.0f} MiB",
        f"{'K':>3}{'tree tok/s':>12}{'raw tok/s':>11}{'ratio':>8}",
    ]
    lines += [f"{b['k']:>3}{b['tree_tok_s']:>12.1f}{b['raw_tok_s']:>11.1f}{b['ratio']:>8.3f}" for b in r.batched]
    if r.remote:
        lines.insert(4, format_remote(r.remote))
    return "\n".join(lines) + "\n"


def format_remote(m: dict) -> str:
    """The remote engine's row beside the KV tree's: tokens sent (and evaluated, where the server says)."""
    evaluated = m["server_evaluated_tokens"]
    ratio = m["recompute_ratio"]
    row = (f"{'remote sent':14}{m['sent_tokens']:>10}{m['distinct_tokens']:>10}"
           f"{m['recompute_ratio_without_cache']:>8.3f}{m['generated_tokens']:>11}{m['seconds']:>9.1f}"
           f"{1000 * m['seconds'] / max(m['generated_tokens'], 1):>10.1f}")
    said = (f"{'remote eval':14}{evaluated:>10}{m['distinct_tokens']:>10}{ratio:>8.3f}" if evaluated is not None
            else f"{'remote eval':14}  (the server reports no count of the tokens it evaluated)")
    return row + "\n" + said + f"\nremote: {m['url']} · {m['requests']} requests · n > 1 " + \
        {True: "honoured", False: "ignored: K requests", None: "not tried"}[m["n_gt_1"]]


def run_chat_bench(settings: Settings, models: list[str], max_tokens: int, runs: int, as_json: bool) -> None:
    from qwq_local.bench.engine_bench import bench_chat

    reports = []
    for name in models:
        model = _load(name, settings, 2048)
        try:
            reports.append(bench_chat(model, max_tokens=max_tokens, runs=runs))
        finally:
            model.close()
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in reports], indent=2))
        return
    typer.echo(f"{'model':36}{'qwq tok/s':>10}{'llama-cpp tok/s':>16}{'ratio':>8}{'turn-2 eval/prompt':>20}")
    for r in reports:
        typer.echo(f"{r.model:36}{r.qwq_tok_s:>10.1f}{r.llama_cpp_tok_s:>16.1f}{r.ratio:>8.3f}"
                   f"{f'{r.turn2_evaluated_tokens}/{r.turn2_prompt_tokens}':>20}")
