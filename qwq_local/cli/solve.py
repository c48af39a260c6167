"""`qwq solve`: read a markdown problem, answer it by plain generation or by search, print the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from qwq_local.app import runtime
from qwq_local.app.search import SOLVE_SEARCH as S
from qwq_local.app.solve import Backend, SolveResult, backend_for, read_problem, why_no_answer
from qwq_local.cli.root import (
    AggOpt,
    BeamOpt,
    BeamWidthOpt,
    CandidatesOpt,
    ChooseOpt,
    CompletionsOpt,
    ExpandWidthOpt,
    SettleOpt,
    WidenOpt,
    LambdaOpt,
    MaxDepthOpt,
    MaxExpansionsOpt,
    TimeLimitOpt,
    TrajectoriesOpt,
    ChatTemplateOpt,
    YesOpt,
    confirm_download,
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
    ThinkBudgetOpt,
    TopKOpt,
    TopPOpt,
    app,
    settings_from,
)
from qwq_local.config import Settings
from qwq_local.errors import ExitCode, UsageError
from qwq_local.problems.prompts import FORMATS
from qwq_local.render.console import Env
from qwq_local.render.solve_progress import SolveProgress
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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live progress on stderr (it is shown only on a "
                               "terminal)."),
    think_budget: Optional[int] = ThinkBudgetOpt,
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
    expand_width: Optional[int] = ExpandWidthOpt,
    widen: Optional[int] = WidenOpt,
    settle: Optional[float] = SettleOpt,
    kv_budget: Optional[str] = typer.Option(None, "--kv-budget", envvar="QWQ_KV_BUDGET",
                                            help="KV the search may hold: tokens (4096) or bytes (512MiB, 2GB)."),
    show_tree: bool = typer.Option(False, "--show-tree", help="Draw the explored tree."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Write the whole tree as JSON."),
    engine: Optional[str] = EngineOpt,
    api_key: Optional[str] = ApiKeyOpt,
    chat_template: Optional[str] = ChatTemplateOpt,
    yes: bool = YesOpt,
) -> None:
    """Answer a markdown problem once, by plain generation or by search.

    Progress goes to stderr when it is a terminal. Ctrl-C prints the best answer found so far (stop_reason
    "interrupted") and exits 130.
    """
    from qwq_local.app.search import check_scorers, check_strategy, prepare_search, search_defaults, search_options

    settings = settings_from(model=model, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                             seed=seed, max_tokens=max_tokens, ctx=ctx_size, gpu_layers=gpu_layers,
                             models_dir=models_dir, kv_budget=kv_budget, head=head, engine=engine, api_key=api_key,
                             system=system, presence_penalty=presence_penalty, repeat_penalty=repeat_penalty,
                             cache_type_k=cache_type_k, cache_type_v=cache_type_v, flash_attn=flash_attn,
                             chat_template=chat_template)
    check_strategy(strategy)
    if fmt != "auto" and fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose from auto, {', '.join(FORMATS)}")
    if strategy == "direct" and (scorer or show_tree or trace):
        raise UsageError("--scorer, --show-tree and --trace need a search strategy (astar, beam, bon, sc)")
    if think_budget is not None and think_budget < 1:
        raise UsageError("--think-budget must be at least 1 token")
    if think_budget is not None and settings.engine is not None:
        raise UsageError("--think-budget works on a local model; with --engine bound the reply with --max-tokens")
    if scorer:
        check_scorers(scorer)
    if trace is not None and (trace.is_dir() or not trace.parent.is_dir()):
        raise UsageError(f"--trace {trace}: not a file in an existing directory")
    problem = read_problem(file)
    # every search option checked before the model is even located, and the head loaded before it loads
    options = search_options(search_defaults(strategy, S, fmt), **given(
        candidates=candidates, trajectories=trajectories, beam=beam, lam=lam, agg=agg, beam_width=beam_width,
        time_limit=time_limit, max_expansions=max_expansions, max_depth=max_depth, completions=completions,
        choose=choose, expand_width=expand_width, widen=widen, settle=settle))
    confirm_download(settings, yes)
    plan = runtime.plan_for(settings, prompt=problem)
    settings = runtime.sized_to(plan, settings)
    if plan.note:
        typer.echo(f"note: {plan.note}", err=True)
    progress = SolveProgress(Env.from_process(), enabled=False if quiet else None)
    result: SolveResult | None = None
    pressed = False  # Ctrl-C after the reply was chosen, while the model was freed
    try:
        if strategy == "direct" and settings.engine is None:
            result = _direct(plan, problem, fmt, settings, show_thinking, as_json, think_budget, progress)
        else:
            from qwq_local.app.solve import solve_search

            setup = prepare_search(plan, settings, strategy, options, scorer, think_budget=think_budget)
            if setup.note and not as_json:
                typer.echo(f"note: {setup.note}", err=True)
            backend = ctx.obj if isinstance(ctx.obj, Backend) else backend_for(settings)
            _loading(progress, plan, settings)
            with backend.policies(plan, settings) as policies:
                progress.done(f"loaded {_name(plan, settings)} in {progress.elapsed():.1f} s")
                progress.searching(strategy)
                result = solve_search(setup, problem, fmt, settings.sampling, policies, history=_system(settings),
                                      watch=progress)
                progress.searched(result.seconds, result.stop_reason)
    except KeyboardInterrupt:
        if result is None:
            raise
        pressed = True
    finally:
        progress.close()
    _print(result, as_json=as_json, show_thinking=show_thinking, show_tree=show_tree, trace=trace)
    if pressed or result.stop_reason == "interrupted":
        raise typer.Exit(int(ExitCode.INTERRUPTED))


def _name(plan: runtime.ModelPlan, settings: Settings) -> str:
    return settings.engine or plan.resolved.path.name


def _loading(progress: SolveProgress, plan: runtime.ModelPlan, settings: Settings) -> None:
    size = "" if settings.engine else f" ({plan.resolved.path.stat().st_size / 2**30:.1f} GiB)"
    progress.start(f"loading {_name(plan, settings)}{size}…")


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
        elif result.stop_reason == "interrupted":
            typer.echo("note: interrupted; this is the best reply found so far", err=True)
    elif result.stop_reason == "length":
        typer.echo("note: the reply stopped at --max-tokens (or the context) before it ended", err=True)
    elif result.stop_reason == "interrupted":
        typer.echo("note: interrupted; this is the reply as far as it got", err=True)
    if show_tree and result.search is not None:
        from qwq_local.render.console import Env
        from qwq_local.render.tree_view import render_tree

        typer.echo(render_tree(result.tree, color=Env.from_process().colors))
    if result.final_answer is not None:
        typer.echo(f"\nFinal answer: {result.final_answer}", err=True)
    elif (reason := why_no_answer(result)) is not None:
        typer.echo(f"note: no final answer: {reason}", err=True)


def _direct(plan: runtime.ModelPlan, problem: str, fmt: str, settings: Settings, show_thinking: bool,
            as_json: bool, think_budget: int | None, progress: SolveProgress) -> SolveResult:
    """Plain generation, streamed to stdout as it comes (the thinking only with --show-thinking, else counted on the
    live line and folded when it closes)."""
    from qwq_local.app.chat import ChatSetup, open_chat
    from qwq_local.app.solve import solve_direct
    from qwq_local.dialog.guard import Intervention
    from qwq_local.dialog.think import ThinkParser

    _loading(progress, plan, settings)
    with open_chat(ChatSetup(plan, None), settings, think=plan.thinks or None) as (chat, _):
        progress.done(f"loaded {_name(plan, settings)} in {progress.elapsed():.1f} s")
        parser = ThinkParser(starts_in_thinking=chat.thinks)
        guard = Intervention(budget=think_budget)
        shown = {"thinking": False, "thought": 0, "folded": False}
        progress.start("reading the prompt…")

        def fold() -> None:
            if not shown["folded"]:
                shown["folded"] = True
                if shown["thought"]:
                    progress.thought(progress.elapsed(), guard.last_tokens or shown["thought"], guard.note())
                else:
                    progress.done()

        def write(segments: list[Any]) -> None:
            for segment in segments:
                if segment.kind == "thinking":
                    shown["thought"] += 1
                    if not show_thinking:
                        progress.thinking(guard.last_tokens or shown["thought"])
                        continue
                    if not shown["folded"]:
                        progress.done()
                        shown["folded"] = True
                    shown["thinking"] = True
                elif segment.kind == "answer":
                    fold()
                    if as_json:
                        continue
                    if shown["thinking"]:  # the thinking shown ends as in a search's output
                        sys.stdout.write("\n\n---\n")
                        shown["thinking"] = False
                else:
                    continue
                if not as_json:
                    sys.stdout.write(segment.text)
            sys.stdout.flush()

        result = solve_direct(chat, problem, fmt, settings.sampling, on_piece=lambda piece: write(parser.feed(piece)),
                              system=settings.system, guard=guard)
        write(parser.close())
        fold()
    if not as_json:
        sys.stdout.write("\n")
    return result


def _system(settings: Settings) -> list[Any]:
    """The system prompt as the messages a search's policy puts before the question."""
    from qwq_local.dialog.messages import Message

    return [Message("system", settings.system)] if settings.system else []


def _write_json(path: Path, data: Any) -> None:
    """Whole or not at all: synced before its rename, no temporary file left by Ctrl-C."""
    from qwq_local.render.commands import write_atomically

    write_atomically(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
