"""Everything a search needs, checked before the model loads: `prepare_search(...) -> SearchSetup`."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from qwq_local.app import runtime
from qwq_local.config import Settings
from qwq_local.errors import UsageError
from qwq_local.search.config import SearchConfig
from qwq_local.search.strategies import STRATEGIES, needs_scorer
from qwq_local.value.combine import ScorerChoice, parse_scorers, scorer_label

if TYPE_CHECKING:  # pragma: no cover
    from qwq_local.value.qhead import QHead

# The search knobs each front end starts from; their CLI options take these defaults.
SOLVE_SEARCH = SearchConfig()
CHAT_SEARCH = SearchConfig(candidates=4, trajectories=4, beam=8, n_samples=4, beam_width=3, max_expansions=24,
                           time_limit=180.0)
BENCH_SEARCH = SearchConfig(candidates=4, trajectories=4, beam=8, n_samples=4, max_expansions=40)

# The measured default A* (benchmarks/README.md, "The search bank"): the first two steps branch two ways each, every
# state at depth 2 is completed twice, and the eight finished paths vote, each with the odds of its confidence; while
# the leading answer holds under 60 % of that vote, up to two whole replies from the question are added (widen).
ASTAR_CHANGES: dict[str, Any] = {"candidates": 2, "trajectories": 8, "max_depth": 2, "completions": 2,
                                 "choose": "value", "agg": "last", "widen": 2}
# What a search scores with unless told: the reply's own token confidence (DeepConf). On the bank it separates right
# from wrong replies of a problem (AUC ~0.78) where the shipped Q-value head does not (below 0.5).
DEFAULT_SCORERS: tuple[ScorerChoice, ...] = (("confidence", 1.0),)
REMOTE_SCORERS = ("confidence", "self-eval", "rules")  # what works without the policy's hidden states
_UNSET: Any = object()


@dataclass(frozen=True)
class SearchSetup:
    """A search ready to run: its strategy, full config, scorers and head, KV budget and model plan."""

    strategy: str
    config: SearchConfig
    scorers: tuple[ScorerChoice, ...]
    head: "QHead | None"
    kv_budget: int | None
    plan: runtime.ModelPlan
    note: str | None = None  # what a front end should tell the user (the default scorers it fell back to)
    think_budget: int | None = None  # tokens each path may think before its </think> is written for it (local only)

    @property
    def scorer_label(self) -> str:
        return scorer_label(self.scorers)


# With --format program the paths' answers are what their programs print in the sandbox, and a program's token
# confidence does not tell a right one from a wrong one: on dev problems 201-300 the programs' plain vote beat the
# confidence-weighted vote (benchmarks/README.md, "Choosing among programs"), so each finished program is one vote.
PROGRAM_ASTAR_CHANGES: dict[str, Any] = {"choose": "vote"}


def search_defaults(strategy: str, base: SearchConfig = SOLVE_SEARCH, fmt: str | None = None) -> SearchConfig:
    """The settings a front end starts `strategy` from: its own base, with the measured A* settings for astar (and
    for a search over programs, `fmt` "program", its own choosing)."""
    if strategy != "astar":
        return base
    config = replace(base, **ASTAR_CHANGES)
    return replace(config, **PROGRAM_ASTAR_CHANGES) if fmt == "program" else config


# Most of each width a search may ask for: every candidate, path and beam node holds KV cells and a sequence of
# llama.cpp's (at most 256), so past these a run ends in minutes of work and a MemoryError, not a better answer.
SEARCH_WIDTH_LIMITS = {"candidates": 64, "trajectories": 256, "beam": 256, "beam_width": 64, "completions": 64,
                       "n_samples": 256, "expand_width": 64, "widen": 256}


def search_options(base: SearchConfig = SOLVE_SEARCH, **changes: Any) -> SearchConfig:
    """`base` with `changes` (SearchConfig fields); a bad or unbounded value is a usage error, not a traceback."""
    known = {f.name for f in fields(SearchConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise TypeError(f"not search options: {', '.join(unknown)}")
    for name, limit in SEARCH_WIDTH_LIMITS.items():
        value = changes.get(name)
        if isinstance(value, int) and value > limit:
            raise UsageError(f"--{name.replace('_', '-')} {value} is over the limit of {limit}")
    for name in ("lam", "time_limit"):
        value = changes.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-').replace('lam', 'lambda')} must be a finite number")
    try:
        return replace(base, **changes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_strategy(strategy: str) -> None:
    """A usage error for a strategy name that is not one of STRATEGIES."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def check_scorers(text: str) -> tuple[ScorerChoice, ...]:
    """The scorers `--scorer` names; a usage error for a name or weight that is not one (before any model)."""
    try:
        return parse_scorers(text)
    except ValueError as exc:
        raise UsageError(f"--scorer: {exc}") from None


def prepare_search(plan: runtime.ModelPlan, settings: Settings, strategy: str, options: SearchConfig,
                   scorer: str | tuple[ScorerChoice, ...] | None = None, *, head: "QHead | None" = _UNSET,
                   think_budget: int | None = None) -> SearchSetup:
    """The SearchSetup for `strategy` on the planned model: every check done, the head loaded, nothing decoded.

    No scorer: the token confidence of the replies (DEFAULT_SCORERS); the Q-value head only when named, or when
    one is given explicitly (`settings.head`: --head, QWQ_HEAD), never the catalog's by default (README: Search).
    Self-consistency votes, so it takes no scorer and no head. `head` given: that head, not loaded again.
    """
    check_strategy(strategy)
    if think_budget is not None and settings.engine is not None:
        raise UsageError("--think-budget works on a local model; with --engine bound the reply with --max-tokens")
    config = replace(options, n_samples=options.trajectories, thinking=plan.thinks,
                     max_reply_tokens=settings.sampling.max_tokens, finish_partial=True)
    kv_budget = runtime.kv_budget_tokens(plan, settings)
    note = None
    if not needs_scorer(strategy):
        if scorer:
            raise UsageError(f"--scorer: {strategy} uses no scorer (self-consistency votes on answers)")
        return SearchSetup(strategy, config, (), None, kv_budget, plan, think_budget=think_budget)
    remote = settings.engine is not None
    if scorer is None and settings.head is not None and not remote:  # a head given explicitly is meant
        scorer = (("qhead", 1.0),)
    if scorer is None:
        choices = DEFAULT_SCORERS
        found = None
    else:
        if isinstance(scorer, str):
            choices = check_scorers(scorer)
        else:
            choices = tuple(scorer)
        wants_head = any(name == "qhead" for name, _ in choices)
        if wants_head and remote:
            raise UsageError(f"--scorer qhead needs the policy's hidden states, which a remote engine does not "
                             f"return; on --engine score with {', '.join(REMOTE_SCORERS)}")
        found = (load_head(plan, settings, required=True) if head is _UNSET else head) if wants_head else None
        if wants_head and found is None:
            raise UsageError("scorer qhead: no Q-value head for this model")
    its_head = found if any(name == "qhead" for name, _ in choices) else None
    return SearchSetup(strategy, config, choices, its_head, kv_budget, plan, note, think_budget)


def load_head(plan: runtime.ModelPlan, settings: Settings, required: bool) -> "QHead | None":
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
