"""`qwq bench accuracy`: every strategy on the same problems with one loaded model; table, JSON, plot.

A strategy is written NAME[@N][:SCORER+SCORER], e.g. `direct`, `sc@8`, `bon@4:qhead`, `astar:self-eval+rules`.
@N sets the samples of sc/bon and the trajectories of astar/beam; without a scorer the model's Q-value head
is used when the catalog ships one, else self-eval+rules.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import typer

from qwq_local import runtime
from qwq_local.bench.accuracy import Outcome, PairedSolve, format_table, run_accuracy
from qwq_local.bench.datasets import Problem, load_problems, problem_seed
from qwq_local.catalog.integrity import sha256_file
from qwq_local.config import Settings
from qwq_local.errors import ExitCode, UsageError
from qwq_local.search.strategies import needs_scorer
from qwq_local.value.combine import SCORER_NAMES

SPEC = re.compile(r"^(direct|astar|beam|bon|sc)(?:@(\d+))?(?::([a-z+\-]+))?$")


class _LoadFailed(BaseException):
    """Carries a model-load failure past run_accuracy's per-run `except Exception`."""

    def __init__(self, error: Exception) -> None:
        self.error = error


@dataclass(frozen=True)
class StrategySpec:
    label: str
    name: str
    n: int | None
    scorers: tuple[str, ...] | None  # None: the default for the model


def parse_strategy(text: str) -> StrategySpec:
    match = SPEC.match(text.strip())
    if not match:
        raise UsageError(f"bad strategy {text!r}: write NAME[@N][:SCORER+SCORER], NAME one of "
                         "direct, astar, beam, bon, sc")
    name, n, scorers = match.group(1), match.group(2), match.group(3)
    names = tuple(scorers.split("+")) if scorers else None
    for scorer in names or ():
        if scorer not in SCORER_NAMES:
            raise UsageError(f"unknown scorer {scorer!r} in {text!r}; choose from {', '.join(SCORER_NAMES)}")
    if n is not None and int(n) < 1:
        raise UsageError(f"{text!r}: N must be at least 1")
    if not needs_scorer(name) and names:
        raise UsageError(f"{text!r}: {name} takes no scorer")
    if name == "direct" and n is not None:
        raise UsageError(f"{text!r}: direct takes no @N")
    return StrategySpec(text.strip(), name, int(n) if n else None, names)


def run_accuracy_bench(settings: Settings, data: str, limit: int | None, strategies: str, opts: dict[str, Any],
                       results: Path | None, as_json: bool, plot: Path | None) -> None:
    from qwq_local.solve_cmd import default_scorers, load_head, search_config

    specs = [parse_strategy(s) for s in strategies.split(",") if s.strip()]
    if plot is not None:
        from qwq_local.bench.plot import check_can_plot

        check_can_plot(plot)
    problems = load_problems(data, limit)
    plan = runtime.plan_model(runtime.locate(settings.model, settings), settings)
    configs = {s.label: _config(s, opts, plan, settings, search_config) for s in specs}
    needs_head = any(s.scorers is None or "qhead" in s.scorers for s in specs if needs_scorer(s.name))
    head = load_head(plan, settings, required=any("qhead" in (s.scorers or ()) for s in specs)) if needs_head else None
    default = default_scorers(head)
    head_id = f"{head.path.name} sha256:{sha256_file(head.path)[:16]}" if head is not None else None
    if needs_head and head is None and not as_json:
        typer.echo(f"note: no Q-value head for this model; default scorer {'+'.join(default)}", err=True)
    kv_budget = runtime.kv_budget_tokens(plan, settings)
    by_label = {s.label: s for s in specs}
    model = chat = None

    def loaded() -> Any:
        nonlocal model
        if model is None:  # loaded at the first run to do, not at all when every run is in the results
            try:
                model = runtime.load(plan, settings)
            except Exception as exc:  # not one wrong answer per run: the whole benchmark stops
                raise _LoadFailed(exc) from exc
        return model

    def seeded(problem: Problem) -> Any:
        sampling = settings.sampling
        if sampling.seed is None:  # the same draws for a problem whatever ran before it
            sampling = replace(sampling, seed=problem_seed(problem.id))
        return sampling

    def scorers_of(spec: StrategySpec) -> tuple[list[str], Any]:
        scorers = list(spec.scorers or default) if needs_scorer(spec.name) else []
        return scorers, head if "qhead" in scorers else None

    def solve(problem: Problem, label: str) -> Outcome:
        nonlocal chat
        spec = by_label[label]
        if spec.name == "direct":
            from qwq_local.engine.chat import LlamaChat
            from qwq_local.solve import solve_direct

            chat = chat or LlamaChat(loaded(), think=True if plan.thinks else None)
            result = solve_direct(chat, problem.prompt, problem.format, seeded(problem))
            return _outcome(result)
        from qwq_local.solve import solve_search

        scorers, its_head = scorers_of(spec)
        result = solve_search(loaded(), problem.prompt, problem.format, seeded(problem), spec.name, configs[label],
                              scorers, thinks=plan.thinks, head=its_head, kv_budget=kv_budget, n_ctx=plan.n_ctx)
        return _outcome(result)

    def solve_pair(problem: Problem, label: str, partner: str) -> tuple[Outcome | Exception, Outcome | Exception]:
        from qwq_local.solve import solve_sc_and_bon

        sc_label, bon_label = (label, partner) if by_label[label].name == "sc" else (partner, label)
        scorers, its_head = scorers_of(by_label[bon_label])
        by_vote, by_score = solve_sc_and_bon(loaded(), problem.prompt, problem.format, seeded(problem),
                                             configs[label], scorers, thinks=plan.thinks, head=its_head,
                                             kv_budget=kv_budget, n_ctx=plan.n_ctx)
        outcomes = {sc_label: _outcome(by_vote, pooled_with=bon_label),
                    bon_label: by_score if isinstance(by_score, Exception) else _outcome(by_score, pooled_with=sc_label)}
        return outcomes[label], outcomes[partner]

    setup = _setup(settings, data, opts, plan)
    try:
        started = time.perf_counter()
        try:
            report = run_accuracy(problems, [s.label for s in specs],
                                  PairedSolve(pair_replies(specs), solve_pair, solve), results,
                                  setups={s.label: {**setup, **_scoring(scorers_of(s)[0], head_id)} for s in specs})
        except _LoadFailed as failed:
            raise failed.error from None
    finally:
        if model is not None:
            model.close()
    if as_json:
        typer.echo(report.to_json())
    else:
        typer.echo(f"{data}: {len(problems)} problems · model {settings.model} · "
                   f"{time.perf_counter() - started:.0f} s this run")
        typer.echo(format_table(report))
    if plot is not None:
        from qwq_local.bench.plot import plot_accuracy

        plot_accuracy(report, plot, title=f"{data} · {settings.model}")
        if not as_json:
            typer.echo(f"plot: {plot}")
    if report.interrupted:
        raise typer.Exit(int(ExitCode.INTERRUPTED))


def pair_replies(specs: list[StrategySpec]) -> dict[str, str]:
    """sc@N and bon@N with the same N, each mapped to the other: they rank one sampling of N replies.

    Both then see the same draws (the comparison is of the choosing alone) for the cost of one.
    """
    pairs: dict[str, str] = {}
    for sc in (s for s in specs if s.name == "sc"):
        bon = next((s for s in specs if s.name == "bon" and s.n == sc.n and s.label not in pairs), None)
        if bon is not None:
            pairs[sc.label], pairs[bon.label] = bon.label, sc.label
    return pairs


def _outcome(result: Any, pooled_with: str | None = None) -> Outcome:
    """A SolveResult as the benchmark records it."""
    generated = result.search.get("generated_tokens", result.thinking_tokens + result.answer_tokens)
    text = (result.thinking + "\n</think>\n\n" if result.thinking else "") + result.answer
    extra = {k: result.search[k] for k in ("expansions", "evaluated_tokens", "terminal_answers") if k in result.search}
    if pooled_with is not None:
        extra["pooled_with"] = pooled_with
    return Outcome(result.final_answer, text, generated, result.seconds, extra)


def _config(spec: StrategySpec, opts: dict[str, Any], plan: Any, settings: Settings, search_config: Any) -> Any:
    if spec.name == "direct":
        return None
    opts = dict(opts)
    if spec.n is not None:
        opts["trajectories"] = spec.n
    return search_config(opts, plan, settings)


def _setup(settings: Settings, data: str, opts: dict[str, Any], plan: Any) -> dict[str, Any]:
    """What a run's result depends on besides its strategy and problem: records of another setup do not mix."""
    sampling = settings.sampling
    return {"model": plan.resolved.path.name, "data": data, "ctx": plan.n_ctx, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "top_k": sampling.top_k, "min_p": sampling.min_p, "seed": sampling.seed,
            "max_tokens": sampling.max_tokens, **{k: opts[k] for k in sorted(opts)}}


def _scoring(scorers: list[str], head_id: str | None) -> dict[str, Any]:
    """A strategy's scorers (a default depends on the head found) and the head file when it is one of them."""
    scoring: dict[str, Any] = {"scorers": "+".join(scorers)} if scorers else {}
    if "qhead" in scorers:
        scoring["head"] = head_id
    return scoring
