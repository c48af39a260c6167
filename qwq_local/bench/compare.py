"""`qwq bench compare`: strategies of `qwq bench accuracy` results files side by side on the problems they share,
with paired sign tests, and searches' finished paths chosen again offline (sample once, judge many choosers)."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwq_local.bench.accuracy import wilson_interval
from qwq_local.bench.choose import mean_separation, separation, sign_test
from qwq_local.errors import ExitCode, InputFileError, UsageError
from qwq_local.jsonl import complete_lines
from qwq_local.problems.checks import check
from qwq_local.problems.datasets import Problem
from qwq_local.search.answer import normalize_for_vote
from qwq_local.search.astar import value_weight

RECHOOSERS = ("vote", "value", "top")  # value^B too: each path votes with (g / (1 - g)) ** B
_VALUELESS = re.compile(r"(sc|bon|direct)\b")  # strategies whose record values are vote shares or none


@dataclass(frozen=True)
class Run:
    """One strategy's record of one problem, reduced to what comparing needs."""

    right: bool
    tokens: int
    answers: tuple[str | None, ...] = ()  # a search's finished paths, in order
    values: tuple[float, ...] | None = None  # their values g, when the record keeps them
    problem: Problem | None = None  # what re-chosen answers are checked against (GSM8K and MATH records)


@dataclass(frozen=True)
class Row:
    """One strategy on the shared problems."""

    strategy: str
    problems: int
    right: int
    accuracy: float
    ci_low: float
    ci_high: float
    mean_tokens: float


@dataclass(frozen=True)
class Pair:
    """Two strategies on the shared problems: problems only `strategy` solves, only `other` solves, sign test."""

    strategy: str
    other: str
    wins: int
    losses: int
    p_value: float


def read_runs(paths: Sequence[Path]) -> dict[str, dict[str, Run]]:
    """Per strategy, per problem, the run; with the search's finished answers re-checked against the reference where
    the record keeps them. A strategy found in two files is named `strategy@file-stem` the second time."""
    out: dict[str, dict[str, Run]] = {}
    for path in paths:
        if not path.is_file():
            raise InputFileError(f"{path}: no such results file", ExitCode.FILE_NOT_FOUND)
        mine: dict[str, dict[str, Run]] = defaultdict(dict)
        for number, line in enumerate(complete_lines(path), 1):  # a running `bench accuracy` may be appending
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                pid, strategy = str(record["problem_id"]), str(record["strategy"])
                mine[strategy][pid] = _run(record)
            except (ValueError, KeyError, TypeError):
                raise InputFileError(f"{path}:{number}: not an accuracy results line", ExitCode.BAD_DATA) from None
        for strategy, runs in mine.items():
            out[strategy if strategy not in out else f"{strategy}@{path.stem}"] = runs
    return out


def _run(record: Mapping[str, Any]) -> Run:
    extra = record.get("extra") or {}
    answers = tuple(extra.get("terminal_answers") or ())
    kept = extra.get("terminal_values")
    values = tuple(float(v) for v in kept) if isinstance(kept, list) and len(kept) == len(answers) else None
    reference, kind = record.get("reference"), record.get("kind")
    problem = None
    if reference is not None and kind in ("gsm8k", "math"):  # MBPP answers need their programs to be checked
        problem = Problem(id=str(record["problem_id"]), kind=str(kind), prompt="", answer=str(reference))
    return Run(bool(record["correct"]), int(record["generated_tokens"]), answers, values, problem)


def rechoose(answers: Sequence[str | None], values: Sequence[float], how: str) -> str | None:
    """The answer a chooser picks among finished paths: `vote` (1 each), `value` (odds of g), `value^B` (odds to the
    power B), `top` (the highest g)."""
    scored = [(a, v) for a, v in zip(answers, values or [0.5] * len(answers)) if a is not None]
    if not scored:
        return None
    if how == "top":
        return max(scored, key=lambda av: av[1])[0]
    power = _power(how)
    totals: dict[str, float] = defaultdict(float)
    first: dict[str, str] = {}
    for answer, value in scored:
        key = normalize_for_vote(answer)
        first.setdefault(key, answer)
        totals[key] += 1.0 if how == "vote" else value_weight(value, power)
    order = list(first)
    return first[max(totals, key=lambda key: (totals[key], -order.index(key)))]


def _power(how: str) -> float:
    name, _, power = how.partition("^")
    if name not in RECHOOSERS or (power and name != "value"):
        raise UsageError(f"--rechoose {how!r}: give vote, value, value^B or top")
    try:
        value = float(power) if power else 1.0
    except ValueError:
        raise UsageError(f"--rechoose {how!r}: B must be a number") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"--rechoose {how!r}: B must be a finite number >= 0")
    return value


def add_rechosen(runs: dict[str, dict[str, Run]], rechoosers: Sequence[str]) -> dict[str, dict[str, Run]]:
    """`strategy/chooser` for every strategy whose records keep finished paths with values."""
    for how in rechoosers:
        _power(how)
    out = dict(runs)
    for strategy, by_problem in runs.items():
        if _VALUELESS.match(strategy):  # their values are vote shares or none, not path values
            continue
        if not by_problem or not all(r.values is not None and r.problem for r in by_problem.values()):
            continue
        for how in rechoosers:  # a search that finished no path keeps its own answer (from its best open path)
            out[f"{strategy}/{how}"] = {
                pid: Run(_checked(r.problem, rechoose(r.answers, r.values or (), how)) if r.answers else r.right,
                         r.tokens)
                for pid, r in by_problem.items() if r.problem is not None}
    return out


def _checked(problem: Problem, answer: str | None) -> bool:
    try:
        return answer is not None and check(problem, "", answer)
    except Exception:  # noqa: BLE001 - as bench accuracy does: an answer the checker fails on counts as wrong
        return False


@dataclass(frozen=True)
class Paths:
    """A strategy's finished paths on the shared problems: reach, and how their values separate right from wrong."""

    strategy: str
    paths: int
    reached: int
    chosen: int  # of the reached problems, those answered right
    mixed: int
    auc: float | None
    top_right: float | None
    random_right: float | None


@dataclass(frozen=True)
class CompareReport:
    problems: int
    rows: list[Row]
    pairs: list[Pair]
    paths: list[Paths] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"problems": self.problems, "rows": [asdict(r) for r in self.rows],
                "pairs": [asdict(p) for p in self.pairs], "paths": [asdict(p) for p in self.paths]}


def compare(runs: Mapping[str, Mapping[str, Run]], strategies: Sequence[str], against: Sequence[str]
            ) -> CompareReport:
    """`strategies` on the problems every one of them has, each paired with every strategy in `against`."""
    unknown = [s for s in (*strategies, *against) if s not in runs]
    if unknown:
        raise UsageError(f"no runs of {', '.join(unknown)} (found: {', '.join(sorted(runs))})")
    shared = sorted(set.intersection(*(set(runs[s]) for s in strategies))) if strategies else []
    if against:
        shared = sorted(set(shared).intersection(*(set(runs[s]) for s in against)))
    rows = []
    for strategy in strategies:
        right = sum(runs[strategy][pid].right for pid in shared)
        low, high = wilson_interval(right, len(shared))
        tokens = sum(runs[strategy][pid].tokens for pid in shared) / len(shared) if shared else 0.0
        rows.append(Row(strategy, len(shared), right, right / len(shared) if shared else 0.0, low, high, tokens))
    pairs = []
    for strategy in strategies:
        for other in against:
            if other == strategy:
                continue
            wins = sum(runs[strategy][p].right and not runs[other][p].right for p in shared)
            losses = sum(runs[other][p].right and not runs[strategy][p].right for p in shared)
            pairs.append(Pair(strategy, other, wins, losses, sign_test(wins, losses)))
    paths = [found for strategy in strategies if (found := path_report(strategy, runs[strategy], shared))]
    return CompareReport(len(shared), rows, pairs, paths)


def path_report(strategy: str, by_problem: Mapping[str, Run], shared: Sequence[str]) -> Paths | None:
    """Reach and value separation of a strategy's finished paths, when its records keep them (checked again here)."""
    runs = [by_problem[pid] for pid in shared]
    checkable = [(run, problem) for run in runs if (problem := run.problem) is not None]
    if len(checkable) < len(runs) or not any(run.answers for run in runs):
        return None
    valued = not _VALUELESS.match(strategy) and all(run.values is not None for run in runs)
    paths = reached = chosen = 0
    found = []
    for run, problem in checkable:
        verdicts = {a: _checked(problem, a) for a in set(run.answers) if a is not None}  # each answer checked once
        right = [a is not None and verdicts[a] for a in run.answers]
        paths += len(right)
        if any(right):
            reached += 1
            chosen += run.right
        if valued:
            found.append(separation(list(zip(run.values or (), right))))
    return Paths(strategy, paths, reached, chosen, *mean_separation(found))


def format_compare(report: CompareReport) -> str:
    width = max([len(r.strategy) for r in report.rows] + [8])
    lines = [f"{report.problems} problems shared by every strategy",
             f"{'strategy':<{width}}  {'right':>5}  {'accuracy':>8}  {'95% CI':>13}  {'tokens/problem':>14}"]
    for r in report.rows:
        lines.append(f"{r.strategy:<{width}}  {r.right:>5}  {r.accuracy:>8.1%}  "
                     f"{f'[{r.ci_low:.1%}, {r.ci_high:.1%}]':>13}  {r.mean_tokens:>14.0f}")
    if report.pairs:
        lines.append("")
        lines.append(f"{'strategy':<{width}}  {'against':<{width}}  {'+/-':>8}  {'sign test p':>11}")
        for p in report.pairs:
            lines.append(f"{p.strategy:<{width}}  {p.other:<{width}}  {f'+{p.wins}/-{p.losses}':>8}  "
                         f"{p.p_value:>11.3f}")
    if report.paths:
        lines += ["", f"{'paths of':<{width}}  {'paths':>6}  {'reached':>7}  {'chosen':>6}  {'mixed':>5}  {'AUC':>5}  "
                      f"{'top right':>9}  {'random':>6}  {'ratio':>5}"]
        for q in report.paths:
            head = (f"{q.strategy:<{width}}  {q.paths:>6}  {q.reached:>7}  "
                    f"{f'{q.chosen / q.reached:.0%}' if q.reached else '-':>6}  {q.mixed:>5}")
            if q.auc is None or q.top_right is None or not q.random_right:
                lines.append(head)
                continue
            lines.append(f"{head}  {q.auc:>5.3f}  {q.top_right:>9.1%}  {q.random_right:>6.1%}  "
                         f"{q.top_right / q.random_right:>5.2f}")
    return "\n".join(lines)
