"""`qwq bench engine|chat|accuracy`: engine speed against raw llama.cpp, and strategies' accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qwq_local.app.search import BENCH_SEARCH as S
from qwq_local.cli.root import (ApiKeyOpt, CtxOpt, EngineOpt, GpuOpt, HeadOpt, ModelOpt, ModelsDirOpt, bench_app,
                                settings_from)
from qwq_local.errors import UsageError

BENCH_MODELS = ["smollm2-135m", "qwen2.5-coder-0.5b"]


@bench_app.command("engine")
def bench_engine(
    model: list[str] = typer.Option(BENCH_MODELS, "--model", "-m"),
    ks: str = typer.Option("1,2,4,8", "--k", help="Sibling counts for batched expansion."),
    steps: int = typer.Option(48, "--steps", help="Tokens per step."),
    kv_budget: Optional[int] = typer.Option(None, "--kv-budget"),
    models_dir: Optional[Path] = ModelsDirOpt,
    as_json: bool = typer.Option(False, "--json"),
    engine: Optional[str] = EngineOpt,
    api_key: Optional[str] = ApiKeyOpt,
) -> None:
    """KV tree vs naive re-prefill (recompute ratio, wall time) and batched tok/s vs raw llama.cpp.

    With --engine: the same search on that server too (tokens sent and evaluated there: the remote recompute ratio).
    """
    from qwq_local.bench.run import run_engine_bench

    try:
        counts = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--k {ks!r}: give sibling counts such as 1,2,4,8") from None
    if not counts or any(not 1 <= k <= 128 for k in counts):
        raise UsageError(f"--k {ks!r}: each sibling count must be from 1 to 128")
    run_engine_bench(settings_from(models_dir=models_dir, engine=engine, api_key=api_key), model, counts, steps,
                     kv_budget, as_json)


@bench_app.command("chat")
def bench_chat(
    model: list[str] = typer.Option(BENCH_MODELS, "--model", "-m"),
    max_tokens: int = typer.Option(128, "--max-tokens"),
    runs: int = typer.Option(3, "--runs"),
    models_dir: Optional[Path] = ModelsDirOpt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Decode tok/s of the qwq chat/solve path vs llama-cpp-python create_completion; 2nd-turn prompt eval."""
    from qwq_local.bench.run import run_chat_bench

    run_chat_bench(settings_from(models_dir=models_dir), model, max_tokens, runs, as_json)


@bench_app.command("accuracy")
def bench_accuracy(
    data: str = typer.Option("gsm8k", "--data", help="gsm8k | math500 | mbpp | FILE.jsonl"),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="The first N problems."),
    strategy: str = typer.Option("direct,sc@4,bon@4,astar", "--strategy", "-s",
                                 help="Comma-separated NAME[@N][:SCORER+SCORER]."),
    model: Optional[str] = ModelOpt,
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Default: one seed per problem."),
    max_tokens: Optional[int] = typer.Option(512, "--max-tokens", help="Tokens of one reply."),
    ctx: Optional[int] = CtxOpt,
    candidates: int = typer.Option(S.candidates, "--candidates", "-K"),
    trajectories: int = typer.Option(S.trajectories, "--trajectories", "-N"),
    beam: int = typer.Option(S.beam, "--beam", "-B"),
    lam: float = typer.Option(S.lam, "--lambda"),
    agg: str = typer.Option(S.agg, "--agg"),
    max_expansions: int = typer.Option(S.max_expansions, "--max-expansions"),
    time_limit: Optional[float] = typer.Option(S.time_limit, "--time-limit", help="Seconds per search."),
    results: Optional[Path] = typer.Option(None, "--results", help="JSONL of runs; a rerun resumes it."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of accuracy against generated tokens."),
    as_json: bool = typer.Option(False, "--json"),
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
    head: Optional[Path] = HeadOpt,
) -> None:
    """Accuracy, generated tokens and seconds per problem of each strategy on the same problems."""
    from qwq_local.app.search import search_options
    from qwq_local.bench.accuracy_run import run_accuracy_bench

    settings = settings_from(model=model, temperature=temperature, seed=seed, max_tokens=max_tokens, ctx=ctx,
                             gpu_layers=gpu_layers, models_dir=models_dir, head=head)
    options = search_options(S, candidates=candidates, trajectories=trajectories, beam=beam, lam=lam, agg=agg,
                             max_expansions=max_expansions, time_limit=time_limit)
    run_accuracy_bench(settings, data, limit, strategy, options, results, as_json, plot)
