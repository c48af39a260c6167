"""`qwq bench engine|chat|accuracy|compare|bank|choose|serve`: engine speed against raw llama.cpp, strategies' accuracy, server load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from qwq_local.app.search import BENCH_SEARCH as S
from qwq_local.bench.choose import DEFAULT_CHOOSERS as CHOOSERS
from qwq_local.bench.choose import STAT_SIGNALS
from qwq_local.cli.root import (AggOpt, ApiKeyOpt, BeamOpt, CandidatesOpt, ChooseOpt, Command, CompletionsOpt, CtxOpt,
                                EngineOpt, ExpandWidthOpt, GpuOpt, HeadOpt, LambdaOpt, MaxDepthOpt, MaxExpansionsOpt,
                                ModelOpt, ModelsDirOpt, SettleOpt, TimeLimitOpt, TrajectoriesOpt, WidenOpt, YesOpt,
                                bench_app, confirm_download, given, settings_from)
from qwq_local.errors import UsageError

BENCH_MODELS = ["smollm2-135m", "qwen2.5-coder-0.5b"]
SIGNALS = (*STAT_SIGNALS, "short", "rules")


@bench_app.command("engine", cls=Command)
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


@bench_app.command("chat", cls=Command)
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


@bench_app.command("accuracy", cls=Command)
def bench_accuracy(
    data: str = typer.Option("gsm8k", "--data", help="gsm8k | math500 | mbpp | FILE.jsonl"),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="The first N problems (after --offset)."),
    offset: int = typer.Option(0, "--offset", help="Skip the first N problems."),
    strategy: str = typer.Option("direct,sc@4,bon@4,astar", "--strategy", "-s",
                                 help="Comma-separated NAME[@N][:SCORER+SCORER]."),
    model: Optional[str] = ModelOpt,
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Default: one seed per problem."),
    max_tokens: Optional[int] = typer.Option(512, "--max-tokens", help="Tokens of one reply."),
    ctx: Optional[int] = CtxOpt,
    candidates: Optional[int] = CandidatesOpt,
    trajectories: Optional[int] = TrajectoriesOpt,
    beam: Optional[int] = BeamOpt,
    lam: Optional[float] = LambdaOpt,
    agg: Optional[str] = AggOpt,
    max_expansions: Optional[int] = MaxExpansionsOpt,
    max_depth: Optional[int] = MaxDepthOpt,
    completions: Optional[int] = CompletionsOpt,
    choose: Optional[str] = ChooseOpt,
    expand_width: Optional[int] = ExpandWidthOpt,
    widen: Optional[int] = WidenOpt,
    settle: Optional[float] = SettleOpt,
    time_limit: Optional[float] = TimeLimitOpt,
    results: Optional[Path] = typer.Option(None, "--results", help="JSONL of runs; a rerun resumes it."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Run again the runs in --results that ended in "
                                      "an error; the new record replaces the old."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of accuracy against generated tokens."),
    as_json: bool = typer.Option(False, "--json"),
    fmt: Optional[str] = typer.Option(None, "--format", help="Ask every problem in this format instead of its own "
                                      "(program: answered by its program, run in the sandbox)."),
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
    head: Optional[Path] = HeadOpt,
    engine: Optional[str] = EngineOpt,
    api_key: Optional[str] = ApiKeyOpt,
    yes: bool = YesOpt,
) -> None:
    """Accuracy, generated tokens and seconds per problem of each strategy on the same problems.

    Search options not given take each strategy's defaults (A*: the measured ones, README "Search").
    With --engine every strategy runs on that server (direct through its completions, searches as on solve)."""
    from qwq_local.bench.accuracy_run import run_accuracy_bench

    settings = settings_from(model=model, temperature=temperature, seed=seed, max_tokens=max_tokens, ctx=ctx,
                             gpu_layers=gpu_layers, models_dir=models_dir, head=head, engine=engine,
                             api_key=api_key)
    changes = given(candidates=candidates, trajectories=trajectories, beam=beam, lam=lam, agg=agg,
                    max_expansions=max_expansions, time_limit=time_limit, max_depth=max_depth,
                    completions=completions, choose=choose, expand_width=expand_width, widen=widen,
                    settle=settle)
    run_accuracy_bench(settings, data, limit, strategy, changes, results, as_json, plot, offset,
                       before_load=lambda: confirm_download(settings, yes), fmt=fmt, retry_errors=retry_errors)


@bench_app.command("bank", cls=Command)
def bench_bank(
    results: Path = typer.Option(..., "--results", help="Directory of the bank (bank.jsonl); a rerun resumes it."),
    data: str = typer.Option("gsm8k", "--data", help="gsm8k | gsm8k-train | math500 | mbpp | FILE.jsonl"),
    offset: int = typer.Option(0, "--offset", help="Skip the first N problems."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Then take N problems."),
    shape: str = typer.Option("2,2,2", "--shape", help="Children per state at each depth; the last level completes."),
    model: Optional[str] = ModelOpt,
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t"),
    max_tokens: Optional[int] = typer.Option(512, "--max-tokens", help="Tokens of one reply."),
    step_min_tokens: int = typer.Option(S.stop.min_tokens, "--step-min-tokens"),
    ctx: Optional[int] = CtxOpt,
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
) -> None:
    """Sample a tree of replies per problem once and record every step's statistics, for `qwq bench choose`."""
    from dataclasses import replace as _replace

    from qwq_local.bench.bank import parse_shape
    from qwq_local.bench.bank_run import run_bank

    if offset < 0 or (limit is not None and limit < 1):
        raise UsageError("--offset must be >= 0 and --limit >= 1")
    try:
        levels = parse_shape(shape)
    except ValueError as exc:
        raise UsageError(f"--shape: {exc}") from None
    settings = settings_from(model=model, temperature=temperature, max_tokens=max_tokens, ctx=ctx,
                             gpu_layers=gpu_layers, models_dir=models_dir)
    stop = _replace(S.stop, min_tokens=step_min_tokens)
    run_bank(settings, data, offset, limit, levels, results, stop, lambda line: typer.echo(line, err=True))


@bench_app.command("choose", cls=Command)
def bench_choose(
    bank: list[Path] = typer.Argument(..., help="Bank directories (or bank.jsonl files) from `qwq bench bank`."),
    chooser: str = typer.Option(",".join(CHOOSERS), "--chooser", "-c",
                                help="Comma-separated: vote, top:SIG, wvote:SIG[^B], filter:SIG@ETA; SIG may add "
                                     "weighted signals (tail_conf+rules*0.5); a trailing !SIG drops the leaves whose "
                                     "SIG is below 0 first (wvote:tail_conf!rules)."),
    signal: str = typer.Option(",".join(SIGNALS), "--signal",
                               help="Signals whose separation to report: the leaves' statistics, short, rules, head "
                                    "and head_min (with --head), or sums such as tail_conf+rules*0.5."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="The first N problems of the bank."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of accuracy against leaves (1 .. S)."),
    head: Optional[Path] = typer.Option(None, "--head", help="A Q-value head: adds the signals head, head_min "
                                        "(on the problems it was not trained on)."),
    head_folds: Optional[int] = typer.Option(None, "--head-folds",
                                             help="Add head, head_min from heads trained on the bank itself, each "
                                                  "problem valued by one trained on the other K-1 folds."),
    head_features: str = typer.Option("last", "--head-features",
                                      help="With --head-folds: the states the heads read: last (the last layer at "
                                           "a step's last token), mean (over its tokens), mid, mid_mean (a middle "
                                           "layer), or several joined by + (last+mid_mean)."),
    baseline: list[Path] = typer.Option([], "--baseline",
                                        help="`qwq bench accuracy` results: its strategies on the same problems."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every chooser and value signal on the same recorded samples: accuracy, sign test, AUC, accuracy by samples."""
    from qwq_local.bench.choose_run import run_choose

    run_choose(bank, [c.strip() for c in chooser.split(",") if c.strip()],
               [s.strip() for s in signal.split(",") if s.strip()], limit, plot, as_json, head, baseline,
               head_folds, head_features)


@bench_app.command("compare", cls=Command)
def bench_compare(
    results: list[Path] = typer.Argument(..., help="`qwq bench accuracy --results` files."),
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s",
                                           help="Comma-separated strategies to show (default: all found)."),
    against: Optional[str] = typer.Option(None, "--against", help="Pair each strategy with these (default: all)."),
    rechoose: str = typer.Option("", "--rechoose",
                                 help="Choose searches' finished paths again: vote, value, value^B, top."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Strategies from several results files on the problems they share, with paired sign tests.

    With --rechoose, every search whose records keep its finished paths and their values is judged again with
    other choosers on the same samples, as `strategy/chooser`.
    """
    from qwq_local.bench.compare import add_rechosen, compare, format_compare, read_runs

    runs = add_rechosen(read_runs(results), _names(rechoose))
    shown = _names(strategy) if strategy else sorted(runs)
    report = compare(runs, shown, _names(against) if against else shown)
    typer.echo(json.dumps(report.to_dict(), indent=1) if as_json else format_compare(report))


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


@bench_app.command("serve", cls=Command)
def bench_serve(
    model: Optional[str] = ModelOpt,
    clients: str = typer.Option("1,4,8", "--clients", help="Concurrent client counts."),
    requests: int = typer.Option(16, "--requests", help="Requests per client count."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens of each reply."),
    ctx: Optional[int] = CtxOpt,
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Requests/min and tokens/s through `qwq serve` at 1, 4, 8 clients vs the same model driven directly."""
    import json

    from qwq_local.serve.bench import run_serve_bench

    try:
        levels = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError:
        raise UsageError(f"--clients {clients!r}: give client counts such as 1,4,8") from None
    if not levels or any(not 1 <= c <= 64 for c in levels):
        raise UsageError(f"--clients {clients!r}: each client count must be from 1 to 64")
    if requests < 1 or max_tokens < 1:
        raise UsageError("--requests and --max-tokens must be at least 1")
    settings = settings_from(model=model, ctx=ctx, gpu_layers=gpu_layers, models_dir=models_dir)
    rows = run_serve_bench(settings, levels, requests, max_tokens)
    if as_json:
        typer.echo(json.dumps({"model": settings.model, "requests": requests, "max_tokens": max_tokens,
                               "rows": [row.to_json() for row in rows]}, indent=2))
        return
    typer.echo(f"qwq bench serve · {settings.model} · {requests} requests of {max_tokens} tokens per row")
    typer.echo(f"{'clients':>7}  {'server req/min':>14}  {'server tok/s':>12}  {'direct req/min':>14}  "
               f"{'direct tok/s':>12}  {'ratio':>6}")
    for row in rows:
        typer.echo(f"{row.clients:>7}  {row.served.requests_per_minute:>14.1f}  {row.served.tokens_per_second:>12.1f}"
                   f"  {row.direct.requests_per_minute:>14.1f}  {row.direct.tokens_per_second:>12.1f}"
                   f"  {row.ratio:>6.2f}")
