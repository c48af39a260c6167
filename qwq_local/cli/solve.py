"""`qwq solve`: read a markdown problem, answer it by plain generation or by search, print the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from qwq_local.app import runtime
from qwq_local.app.search import SOLVE_SEARCH as S
from qwq_local.app.solve import Backend, SolveResult, backend_for, read_problem
from qwq_local.cli.root import (
    AggOpt,
    BeamOpt,
    BeamWidthOpt,
    CandidatesOpt,
    ChooseOpt,
    CompletionsOpt,
    LambdaOpt,
    MaxDepthOpt,
    MaxExpansionsOpt,
    TimeLimitOpt,
    TrajectoriesOpt,
    given,
    ApiKeyOpt,
    Command,
    EngineOpt,
    CtxOpt,
    GpuOpt,
    HeadOpt,
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    CacheKOpt,
    CacheVOpt,
    FlashOpt,
    ModelsDirOpt,
    PresenceOpt,
    RepeatOpt,
    SeedOpt,
    SystemOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    app,
    settings_from,
)
from qwq_local.config import Settings
from qwq_local.errors import UsageError
from qwq_local.problems.prompts import FORMATS
from qwq_local.search.strategies import STRATEGIES


@app.command(cls=Command)
def solve(
    ctx: typer.Context,
    file: str = typer.Argument(..., help="Markdown problem file, or - for stdin."),
    model: Optional[str] = ModelOpt,
    strategy: str = typer.Option("direct", "--strategy", "-s", help=" | ".join(STRATEGIES)),
    fmt: str = typer.Option("auto", "--format", help=" | ".join(FORMATS) + " | auto"),
    show_thinking: bool = typer.Option(False, "--show-thinking", help="Print the thinking too."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report."),
    temperature: Optional[float] = TemperatureOpt,
    top_p: Optional[float] = TopPOpt,
    top_k: Optional[int] = TopKOpt,
    min_p: Optional[float] = MinPOpt,
    seed: Optional[int] = SeedOpt,
    max_tokens: Optional[int] = MaxTokensOpt,
    presence_penalty: Optional[float] = PresenceOpt,
    repeat_penalty: Optional[float] = RepeatOpt,
    system: Optional[str] = SystemOpt,
    ctx_size: Optional[int] = CtxOpt,
    cache_type_k: Optional[str] = CacheKOpt,
    cache_type_v: Optional[str] = CacheVOpt,
    flash_attn: Optional[bool] = FlashOpt,
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
    candidates: Optional[int] = CandidatesOpt,
    trajectories: Optional[int] = TrajectoriesOpt,
    beam: Optional[int] = BeamOpt,
    beam_width: Optional[int] = BeamWidthOpt,
    lam: Optional[float] = LambdaOpt,
    agg: Optional[str] = AggOpt,
    scorer: Optional[str] = typer.Option(None, "--scorer", help="confidence | qhead | self-eval | rules, joined by + "
                                         "(NAME:WEIGHT weighs one)."),
    head: Optional[Path] = HeadOpt,
    time_limit: Optional[float] = TimeLimitOpt,
    max_expansions: Optional[int] = MaxExpansionsOpt,
    max_depth: Optional[int] = MaxDepthOpt,
    completions: Optional[int] = CompletionsOpt,
    choose: Optional[str] = ChooseOpt,
    kv_budget: Optional[str] = typer.Option(None, "--kv-budget",
                                            help="KV the search may hold: tokens (4096) or bytes (512MiB, 2GB)."),
    show_tree: bool = typer.Option(False, "--show-tree", help="Draw the explored tree."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Write the whole tree as JSON."),
    engine: Optional[str] = EngineOpt,
    api_key: Optional[str] = ApiKeyOpt,
) -> None:
    """Answer a markdown problem once, by plain generation or by search."""
    from qwq_local.app.search import check_scorers, check_strategy, prepare_search, search_defaults, search_options

    settings = settings_from(model=model, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                             seed=seed, max_tokens=max_tokens, ctx=ctx_size, gpu_layers=gpu_layers,
                             models_dir=models_dir, kv_budget=kv_budget, head=head, engine=engine, api_key=api_key,
                             system=system, presence_penalty=presence_penalty, repeat_penalty=repeat_penalty,
                             cache_type_k=cache_type_k, cache_type_v=cache_type_v, flash_attn=flash_attn)
    check_strategy(strategy)
    if fmt != "auto" and fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose from auto, {', '.join(FORMATS)}")
    if strategy == "direct" and (scorer or show_tree or trace):
        raise UsageError("--scorer, --show-tree and --trace need a search strategy (astar, beam, bon, sc)")
    if scorer:
        check_scorers(scorer)
    if trace is not None and (trace.is_dir() or not trace.parent.is_dir()):
        raise UsageError(f"--trace {trace}: not a file in an existing directory")
    problem = read_problem(file)
    # every search option checked before the model is even located, and the head loaded before it loads
    options = search_options(search_defaults(strategy, S), **given(
        candidates=candidates, trajectories=trajectories, beam=beam, lam=lam, agg=agg, beam_width=beam_width,
        time_limit=time_limit, max_expansions=max_expansions, max_depth=max_depth, completions=completions,
        choose=choose))
    plan = runtime.plan_for(settings, prompt=problem)
    if plan.note:
        typer.echo(f"note: {plan.note}", err=True)
    if strategy == "direct" and settings.engine is None:
        result = _direct(plan, problem, fmt, settings, show_thinking, as_json)
    else:
        from qwq_local.app.solve import solve_search

        setup = prepare_search(plan, settings, strategy, options, scorer)
        if setup.note and not as_json:
            typer.echo(f"note: {setup.note}", err=True)
        backend = ctx.obj if isinstance(ctx.obj, Backend) else backend_for(settings)
        with backend.policies(plan, settings) as policies:
            result = solve_search(setup, problem, fmt, settings.sampling, policies, history=_system(settings))
    _print(result, as_json=as_json, show_thinking=show_thinking, show_tree=show_tree, trace=trace)


def _print(result: SolveResult, *, as_json: bool, show_thinking: bool, show_tree: bool, trace: Path | None) -> None:
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    if trace is not None and result.search is not None:
        try:
            _write_json(trace, {"result": result.to_json(), "tree": result.tree})
        except OSError as exc:
            typer.echo(f"warning: could not write the trace {trace}: {exc.strerror or exc}", err=True)
    if as_json:
        return
    if result.search is not None:
        if show_thinking and result.thinking:
            typer.echo(result.thinking + "\n\n---\n")
        typer.echo(result.answer)
        if not result.search.complete:
            typer.echo(f"note: the search stopped ({result.search.stop_reason or 'budget'}) before a reply "
                       "finished; this is the best partial one", err=True)
    if show_tree and result.search is not None:
        from qwq_local.render.console import Env
        from qwq_local.render.tree_view import render_tree

        typer.echo(render_tree(result.tree, color=Env.from_process().colors))
    if result.final_answer is not None:
        typer.echo(f"\nFinal answer: {result.final_answer}", err=True)


def _direct(plan: runtime.ModelPlan, problem: str, fmt: str, settings: Settings, show_thinking: bool,
            as_json: bool) -> SolveResult:
    """Plain generation, streamed to stdout as it comes (the thinking only with --show-thinking)."""
    from qwq_local.app.solve import solve_direct
    from qwq_local.dialog.think import ThinkParser
    from qwq_local.engine.chat import LlamaChat

    model = runtime.load(plan, settings)
    try:
        chat = LlamaChat(model, think=plan.thinks or None)
        parser = ThinkParser(starts_in_thinking=chat.thinks)
        shown = {"thinking": False}

        def write(segments: list[Any]) -> None:
            for segment in segments:
                if segment.kind == "thinking" and show_thinking:
                    shown["thinking"] = True
                elif segment.kind == "answer":
                    if shown["thinking"]:  # the thinking shown ends as in a search's output
                        sys.stdout.write("\n\n---\n")
                        shown["thinking"] = False
                else:
                    continue
                sys.stdout.write(segment.text)
            sys.stdout.flush()

        result = solve_direct(chat, problem, fmt, settings.sampling,
                              on_piece=None if as_json else lambda piece: write(parser.feed(piece)),
                              system=settings.system)
        if not as_json:
            write(parser.close())
    finally:
        model.close()
    if not as_json:
        sys.stdout.write("\n")
    return result


def _system(settings: Settings) -> list[Any]:
    """The system prompt as the messages a search's policy puts before the question."""
    from qwq_local.dialog.messages import Message

    return [Message("system", settings.system)] if settings.system else []


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
