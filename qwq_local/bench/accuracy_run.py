"""`qwq bench accuracy`: every strategy on the same problems with one model (here or on --engine); table, JSON, plot.

A strategy is written NAME[@N][:SCORER+SCORER], e.g. `direct`, `sc@8`, `bon@4:qhead`, `astar:self-eval+rules`.
@N sets the samples of sc/bon and the trajectories of astar/beam; without a scorer the replies' token confidence
scores (`DEFAULT_SCORERS`).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import typer

from qwq_local.app import runtime
from qwq_local.app.chat import ChatSetup, open_chat
from qwq_local.app.search import (
    BENCH_SEARCH,
    SearchSetup,
    load_head,
    prepare_search,
    search_defaults,
    search_options,
)
from qwq_local.app.solve import PolicyFactory, SolveResult, solve_direct, solve_search, solve_sc_and_bon
from qwq_local.bench.accuracy import Outcome, PairedSolve, format_table, run_accuracy
from qwq_local.catalog.integrity import sha256_file
from qwq_local.config import Settings
from qwq_local.dialog.think import wrap_thinking
from qwq_local.errors import ExitCode, InputFileError, NotPulledError, UsageError
from qwq_local.problems.checks import check
from qwq_local.problems.datasets import Problem, load_problems, problem_seed
from qwq_local.problems.prompts import FORMATS
from qwq_local.search.config import SearchConfig
from qwq_local.search.strategies import STRATEGIES, needs_scorer
from qwq_local.value.combine import ScorerChoice, parse_scorers

SPEC = re.compile(rf"^({'|'.join(map(re.escape, STRATEGIES))})(?:@(\d+))?(?::([a-z0-9+,:.\-]+))?$")
# The search options a run's records are keyed by (a rerun with other values does not mix with them).
RECORDED_OPTIONS = ("agg", "beam", "candidates", "choose", "completions", "expand_width", "lam", "max_depth",
                    "max_expansions", "settle", "time_limit", "trajectories", "widen")


class _LoadFailed(BaseException):
    """Carries a model-load failure past run_accuracy's per-run `except Exception`."""

    def __init__(self, error: Exception) -> None:
        self.error = error


@dataclass(frozen=True)
class StrategySpec:
    label: str
    name: str
    n: int | None
    scorers: tuple[str, ...] | None  # scorer names; None: the default for the model
    weights: tuple[float, ...] | None = None  # their weights, when any is not 1

    @property
    def choices(self) -> tuple[ScorerChoice, ...] | None:
        if self.scorers is None:
            return None
        return tuple(zip(self.scorers, self.weights or (1.0,) * len(self.scorers)))


def parse_strategy(text: str) -> StrategySpec:
    match = SPEC.match(text.strip())
    if not match:
        raise UsageError(f"bad strategy {text!r}: write NAME[@N][:SCORER+SCORER], NAME one of "
                         f"{', '.join(STRATEGIES)}")
    name, n, scorers = match.group(1), match.group(2), match.group(3)
    try:
        choices = parse_scorers(scorers) if scorers else ()
    except ValueError as exc:
        raise UsageError(f"{text!r}: {exc}") from None
    names = tuple(name for name, _ in choices) or None
    weights = tuple(weight for _, weight in choices) if any(w != 1 for _, w in choices) else None
    if n is not None and int(n) < 1:
        raise UsageError(f"{text!r}: N must be at least 1")
    if not needs_scorer(name) and names:
        raise UsageError(f"{text!r}: {name} takes no scorer")
    if name == "direct" and n is not None:
        raise UsageError(f"{text!r}: direct takes no @N")
    return StrategySpec(text.strip(), name, int(n) if n else None, names, weights)


def run_accuracy_bench(settings: Settings, data: str, limit: int | None, strategies: str, changes: dict[str, Any],
                       results: Path | None, as_json: bool, plot: Path | None, offset: int = 0,
                       before_load: Callable[[], None] = lambda: None, fmt: str | None = None,
                       retry_errors: bool = False) -> None:
    """`changes`: the search options given; the rest are each strategy's defaults (`search_defaults`). `fmt`: the
    format every problem is asked in instead of its own (`program`: answered by its program run in the sandbox).
    The problems are offset+1 .. offset+limit of `data`; `before_load` runs after every check, before the model is
    located (the CLI asks there before a large download)."""
    if offset < 0 or (limit is not None and limit < 1):
        raise UsageError("--offset must be >= 0 and --limit >= 1")
    specs = [parse_strategy(s) for s in strategies.split(",") if s.strip()]
    options = {s.label: search_options(search_defaults(s.name, BENCH_SEARCH, fmt), **changes) for s in specs}
    if plot is not None:
        from qwq_local.bench.plot import check_can_plot

        check_can_plot(plot)
    if results is not None and results.is_dir():  # known before the model, not after it loads
        raise InputFileError(f"--results {results} is a directory, not a results file", ExitCode.IS_A_DIRECTORY)
    problems = load_problems(data, None if limit is None else offset + limit)[offset:]
    if not problems:
        raise UsageError(f"{data}: no problems after the first {offset}")
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        if any(p.kind == "mbpp" for p in problems):
            raise UsageError("--format: MBPP problems are asked for code and checked by their tests")
        problems = [replace(p, format=fmt) for p in problems]
    before_load()
    plan = runtime.plan_for(settings)
    needs_head = any(_names_qhead(s.choices or ()) or (s.choices is None and settings.head is not None)
                     for s in specs if needs_scorer(s.name))
    head = load_head(plan, settings, required=True) if needs_head else None
    head_id = f"{head.path.name} sha256:{sha256_file(head.path)[:16]}" if head is not None else None
    setups = {s.label: _search_setup(s, options[s.label], plan, settings, head) for s in specs}
    by_label = {s.label: s for s in specs}
    opened: list[tuple[Any, PolicyFactory]] = []
    stack = contextlib.ExitStack()

    def engine() -> tuple[Any, PolicyFactory]:
        """(chat model, search policies): the model loaded here or the remote engine, opened at the first run
        to do, not at all when every run is in the results."""
        if not opened:
            try:
                chat, turns = stack.enter_context(open_chat(ChatSetup(plan, head), settings,
                                                            think=True if plan.thinks else None))
            except Exception as exc:  # not one wrong answer per run: the whole benchmark stops
                raise _LoadFailed(exc) from exc
            needs = getattr(turns.policies, "needs", None)  # a remote template not known here: plain chat only
            if needs and any(needs_template(s.name) for s in specs):
                raise _LoadFailed(NotPulledError(needs))
            opened.append((chat, turns.policies))
        return opened[0]

    def seeded(problem: Problem) -> Any:
        sampling = settings.sampling
        if sampling.seed is None:  # the same draws for a problem whatever ran before it
            sampling = replace(sampling, seed=problem_seed(problem.id))
        return sampling

    def solve(problem: Problem, label: str) -> Outcome:
        chat, policies = engine()
        if by_label[label].name == "direct":
            return _outcome(solve_direct(chat, problem.prompt, problem.format, seeded(problem)))
        setup = setups[label]
        assert setup is not None
        return _outcome(solve_search(setup, problem.prompt, problem.format, seeded(problem), policies))

    def solve_pair(problem: Problem, label: str, partner: str) -> tuple[Outcome | Exception, Outcome | Exception]:
        sc_label, bon_label = (label, partner) if by_label[label].name == "sc" else (partner, label)
        bon, asked = setups[bon_label], setups[label]
        assert bon is not None and asked is not None
        by_vote, by_score = solve_sc_and_bon(replace(bon, config=asked.config), problem.prompt, problem.format,
                                             seeded(problem), engine()[1])
        outcomes = {sc_label: _outcome(by_vote, pooled_with=bon_label),
                    bon_label: by_score if isinstance(by_score, Exception) else _outcome(by_score, pooled_with=sc_label)}
        return outcomes[label], outcomes[partner]

    setup = {**_setup(settings, data, plan), "format": fmt}
    try:
        started = time.perf_counter()
        try:
            report = run_accuracy(problems, [s.label for s in specs],
                                  PairedSolve(pair_replies(specs), solve_pair, solve), results,
                                  checker=check if fmt != "program" else program_check, retry_errors=retry_errors,
                                  setups={s.label: {**setup, **_recorded(options[s.label]),
                                                    **_scoring(setups[s.label], head_id)} for s in specs})
        except _LoadFailed as failed:
            raise failed.error from None
    finally:
        stack.close()
    if as_json:
        typer.echo(report.to_json())
    else:
        where = f" on {settings.engine}" if settings.engine else ""
        typer.echo(f"{data}: {len(problems)} problems · model {settings.model}{where} · "
                   f"{time.perf_counter() - started:.0f} s this run")
        typer.echo(format_table(report))
    if plot is not None:
        from qwq_local.bench.plot import plot_accuracy

        plot_accuracy(report, plot, title=f"{data} · {settings.model}")
        if not as_json:
            typer.echo(f"plot: {plot}")
    if report.interrupted:
        raise typer.Exit(int(ExitCode.INTERRUPTED))


def program_check(problem: Problem, text: str, final_answer: str | None) -> bool:
    """The program format's check: only what the program printed counts (no number read off the code or its
    comments when it failed)."""
    return bool(final_answer and final_answer.strip()) and check(problem, "", final_answer)


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


def _outcome(result: SolveResult, pooled_with: str | None = None) -> Outcome:
    """A SolveResult as the benchmark records it; one cut short by Ctrl-C is never recorded as a run: the benchmark
    stops there (KeyboardInterrupt) and a rerun does that problem again."""
    if result.stop_reason == "interrupted":
        raise KeyboardInterrupt
    text = wrap_thinking(result.thinking, result.answer)
    extra: dict[str, Any] = {}
    if result.search is not None:
        extra = {"expansions": result.search.expansions, "evaluated_tokens": result.search.evaluated_tokens,
                 "terminal_answers": result.search.terminal_answers,
                 "terminal_values": result.search.terminal_values}
        if result.search.widened:
            extra["widened"] = result.search.widened
    if pooled_with is not None:
        extra["pooled_with"] = pooled_with
    return Outcome(result.final_answer, text, result.generated_tokens, result.seconds, extra)


def needs_template(strategy: str) -> bool:
    """Whether `strategy` renders prompts here (every search does; direct can run on the server's own template)."""
    return strategy != "direct"


def _names_qhead(scorers: tuple[ScorerChoice, ...]) -> bool:
    return any(name == "qhead" for name, _ in scorers)


def _search_setup(spec: StrategySpec, options: SearchConfig, plan: Any, settings: Settings,
                  head: Any) -> SearchSetup | None:
    """The SearchSetup of one strategy (None for direct): @N sets its trajectories and samples."""
    if spec.name == "direct":
        return None
    if spec.n is not None:
        options = replace(options, trajectories=spec.n)
    return prepare_search(plan, settings, spec.name, options, spec.choices, head=head)


def _setup(settings: Settings, data: str, plan: Any) -> dict[str, Any]:
    """What a run's result depends on besides its strategy and problem: records of another setup do not mix."""
    sampling = settings.sampling
    return {"model": plan.resolved.path.name, "data": data, "ctx": plan.n_ctx, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "top_k": sampling.top_k, "min_p": sampling.min_p, "seed": sampling.seed,
            "max_tokens": sampling.max_tokens,
            "engine": settings.engine}  # another engine draws other samples: its runs do not mix with these


def _recorded(options: SearchConfig) -> dict[str, Any]:
    return {k: getattr(options, k) for k in RECORDED_OPTIONS}


def _scoring(setup: SearchSetup | None, head_id: str | None) -> dict[str, Any]:
    """A strategy's scorers (a default depends on the head found) and the head file when it is one of them."""
    if setup is None or not setup.scorers:
        return {}
    scoring: dict[str, Any] = {"scorers": setup.scorer_label}
    if _names_qhead(setup.scorers):
        scoring["head"] = head_id
    return scoring
