"""Runs `qwq solve`: problem first (cheap errors early), then model, then the chosen strategy."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from qwq_local import runtime
from qwq_local.config import Settings
from qwq_local.errors import UsageError
from qwq_local.search.strategies import STRATEGIES, needs_scorer
from qwq_local.solve import SolveResult, read_problem, solve_direct, solve_search

DEFAULT_SCORERS = ["self-eval", "rules"]


def default_scorers(head: Any) -> list[str]:
    """What a search scores with when no --scorer is given: the Q-value head if there is one."""
    return ["qhead"] if head is not None else list(DEFAULT_SCORERS)


def run_solve(settings: Settings, file: str, *, strategy: str, fmt: str, show_thinking: bool,
              as_json: bool, search: dict[str, Any], scorer: str | None, show_tree: bool,
              trace: Path | None) -> None:
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if fmt not in ("auto", "math", "choice", "code", "plain"):
        raise UsageError(f"unknown format {fmt!r}; choose from auto, math, choice, code, plain")
    if strategy == "direct" and (scorer or show_tree or trace):
        raise UsageError("--scorer, --show-tree and --trace need a search strategy (astar, beam, bon, sc)")
    if trace is not None and (trace.is_dir() or not trace.parent.is_dir()):
        raise UsageError(f"--trace {trace}: not a file in an existing directory")
    problem = read_problem(file)
    resolved = runtime.locate(settings.model, settings)
    plan = runtime.plan_model(resolved, settings)
    if strategy != "direct":  # every search option checked, and the head loaded, before the model
        config = search_config(search, plan, settings)
        kv_budget = runtime.kv_budget_tokens(plan, settings)
        names, head = scorer_plan(scorer, strategy, plan, settings, quiet=as_json)
        search = dict(search, config=config, kv_budget=kv_budget, scorers=names, head=head)
    model = runtime.load(plan, settings, chat_ctx=None if strategy == "direct" else runtime.SEARCH_ONLY_CTX)
    try:
        if strategy == "direct":
            result = _direct(model, plan, problem, fmt, settings, show_thinking, as_json)
        else:
            result = _search(model, plan, problem, fmt, settings, strategy, search)
    finally:
        model.close()
    tree = result.search.pop("_tree", None)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    if trace is not None and tree is not None:
        try:
            _write_json(trace, {"result": result.to_json(), "tree": tree})
        except OSError as exc:
            typer.echo(f"warning: could not write the trace {trace}: {exc.strerror or exc}", err=True)
    if as_json:
        return
    if strategy != "direct":
        if show_thinking and result.thinking:
            typer.echo(result.thinking + "\n\n---\n")
        typer.echo(result.answer)
        if not result.search.get("complete", True):
            typer.echo(f"note: the search stopped ({result.search.get('stop_reason') or 'budget'}) before a reply "
                       "finished; this is the best partial one", err=True)
    if show_tree and tree is not None:
        from qwq_local.render.console import Env
        from qwq_local.tree_view import render_tree

        typer.echo(render_tree(tree, color=Env.from_process().colors))
    if result.final_answer is not None:
        typer.echo(f"\nFinal answer: {result.final_answer}", err=True)


def _direct(model: Any, plan: runtime.ModelPlan, problem: str, fmt: str, settings: Settings,
            show_thinking: bool, as_json: bool) -> SolveResult:
    from qwq_local.engine.chat import LlamaChat

    chat = LlamaChat(model, think=plan.thinks or None)
    state = {"in_think": chat.thinks}

    def echo(piece: str) -> None:
        if as_json:
            return
        if state["in_think"]:
            if show_thinking:
                sys.stdout.write(piece)
            if "</think>" in piece:
                state["in_think"] = False
            return
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = solve_direct(chat, problem, fmt, settings.sampling, on_piece=echo)
    if not as_json:
        sys.stdout.write("\n")
    return result


def scorer_plan(scorer: str | None, strategy: str, plan: runtime.ModelPlan, settings: Settings,
                quiet: bool = False) -> tuple[list[str], Any]:
    """Scorer names and the Q-value head for a search, checked before the model loads.

    No --scorer: the head (--head, else the catalog's for the model), else self-eval + rules (said in one line).
    Self-consistency votes, so it takes no scorer and no head.
    """
    from qwq_local.value.combine import parse_scorers

    if not needs_scorer(strategy):
        if scorer:
            raise UsageError(f"--scorer: {strategy} uses no scorer (self-consistency votes on answers)")
        return [], None
    if scorer is None:
        head = load_head(plan, settings, required=False)
        names = default_scorers(head)
        if head is None and not quiet:
            typer.echo(f"note: no Q-value head for this model; scoring with {'+'.join(names)}", err=True)
        return names, head
    try:
        parsed = parse_scorers([scorer])
    except ValueError as exc:
        raise UsageError(f"--scorer: {exc}") from None
    head = load_head(plan, settings, required=True) if any(name == "qhead" for name, _ in parsed) else None
    return [name if weight == 1 else f"{name}:{weight:g}" for name, weight in parsed], head


def _search(model: Any, plan: runtime.ModelPlan, problem: str, fmt: str, settings: Settings,
            strategy: str, opts: dict[str, Any]) -> SolveResult:
    return solve_search(model, problem, fmt, settings.sampling, strategy, opts["config"], opts["scorers"],
                        thinks=plan.thinks, head=opts["head"], kv_budget=opts["kv_budget"],
                        n_ctx=plan.n_ctx)


def search_config(opts: dict[str, Any], plan: runtime.ModelPlan, settings: Settings) -> Any:
    """SearchConfig from the CLI's search options; a bad value is a usage error, not a traceback."""
    from qwq_local.search.config import SearchConfig

    try:
        return SearchConfig(
            candidates=opts["candidates"], trajectories=opts["trajectories"], beam=opts["beam"],
            lam=opts["lam"], agg=opts["agg"], time_limit=opts.get("time_limit"),
            max_expansions=opts.get("max_expansions", 200), max_depth=opts.get("max_depth", 200),
            n_samples=opts["trajectories"], beam_width=opts.get("beam_width", 4),
            thinking=plan.thinks, max_reply_tokens=settings.sampling.max_tokens, finish_partial=True,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def load_head(plan: runtime.ModelPlan, settings: Settings, required: bool) -> Any:
    """The Q-value head for the model: `settings.head` (--head, QWQ_HEAD) if set, else the catalog's, else None.

    It must fit the model: architecture and width always, and the model file's sha256 where the catalog records it.
    """
    path = settings.head if settings.head is not None else plan.resolved.head
    if path is None:
        if required:
            raise UsageError("--scorer qhead: the catalog has no Q-value head for this model "
                             "(train one with `qwq train-head` and pass it with --head FILE)")
        return None
    if not path.is_file():
        raise UsageError(f"--head {path}: no such file")
    from qwq_local.value.qhead import QHead

    return QHead.load(path, model_info=plan.info, model_sha256=_model_sha256(plan))


def _model_sha256(plan: runtime.ModelPlan) -> str | None:
    """The recorded sha256 of the model's (first) file, from the catalog; None for a file given by path."""
    spec = plan.resolved.spec
    if spec is None:
        return None
    return next((f.sha256 for f in spec.files if f.basename == plan.resolved.path.name), None)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
