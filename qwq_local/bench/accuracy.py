"""Accuracy of answer strategies on benchmark problems: resumable JSONL results, Wilson intervals, a table."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from qwq_local.problems.checks import check
from qwq_local.problems.datasets import Problem
from qwq_local.errors import ExitCode, InputFileError, UsageError
from qwq_local.jsonl import complete_lines

Z_95 = 1.959963984540054


@dataclass
class Outcome:
    """What a strategy's solver returns for one problem."""

    final_answer: str | None
    text: str
    generated_tokens: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


Solve = Callable[[Problem, str], Outcome]
Check = Callable[[Problem, str, str | None], bool]


SolvePair = Callable[[Problem, str, str], "tuple[Outcome | Exception, Outcome | Exception]"]


class PairedSolve:
    """A Solve where paired strategies share one run: the first of a pair to come up solves both.

    `partners` maps each paired strategy to the other; `solve_pair(problem, strategy, partner)` returns both
    outcomes (an error in place of an outcome fails only that strategy). The partner's outcome is kept until its
    turn on the same problem; other strategies go to `solve`, and so does a strategy whose partner is already in
    `done` (a resumed results file): its record must not claim draws it did not share.
    """

    def __init__(self, partners: dict[str, str], solve_pair: SolvePair, solve: Solve) -> None:
        self.partners, self.solve_pair, self.solve = partners, solve_pair, solve
        self.done: Container[tuple[str, str]] = ()  # runs recorded before this run; run_accuracy sets it
        self._held: dict[tuple[str, str], Outcome | Exception] = {}

    def __call__(self, problem: Problem, strategy: str) -> Outcome:
        partner = self.partners.get(strategy)
        if partner is None or (partner, problem.id) in self.done:
            return self.solve(problem, strategy)
        self._held = {key: got for key, got in self._held.items() if key[0] == problem.id}
        got = self._held.pop((problem.id, strategy), None)
        if got is None:
            got, self._held[(problem.id, partner)] = self.solve_pair(problem, strategy, partner)
        if isinstance(got, Exception):
            raise got
        return got


@dataclass(frozen=True)
class StrategyScore:
    """One strategy's accuracy over the scored problems, with its 95% Wilson interval and costs."""

    strategy: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    mean_tokens: float  # generated tokens per problem
    mean_seconds: float  # seconds per problem
    errors: int  # problems whose solve raised (counted as wrong)
    reached: int | None = None  # problems with a right answer among its finished ones (None: it keeps none)


@dataclass(frozen=True)
class AccuracyReport:
    """Scores of every strategy on the same problems: those that all strategies have a result for."""

    scores: tuple[StrategyScore, ...]
    problems: int  # problems scored
    pending: int  # (strategy, problem) runs not done, after an interrupt
    interrupted: bool = False
    results_path: str | None = None

    def score(self, strategy: str) -> StrategyScore:
        return next(s for s in self.scores if s.strategy == strategy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion; (0, 1) when there is nothing to go on."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def _read_results(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The records of a results file by (strategy, problem id); a torn last line is mended or cut off the file."""
    if path.is_dir():
        raise InputFileError(f"{path} is a directory, not a results file", ExitCode.IS_A_DIRECTORY)
    if not path.exists():
        return {}
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for number, line in enumerate(complete_lines(path, repair=True), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[(str(record["strategy"]), str(record["problem_id"]))] = record
        except (ValueError, KeyError, TypeError):
            raise InputFileError(f"{path}:{number}: not an accuracy results line", ExitCode.BAD_DATA) from None
    return records


def _check_setup(done: dict[tuple[str, str], dict[str, Any]], setups: Mapping[str, dict[str, Any]],
                 path: Path | None) -> None:
    """Refuse to resume runs of this run's strategies made with another model, head or settings.

    A record without a setup is not trusted (hand-written, or from before setups were kept): it is run again, and
    the new record replaces it. A setting a record does not name passes (settings added since).
    """
    for key in [key for key, record in done.items() if key[0] in setups and not isinstance(record.get("setup"), dict)]:
        del done[key]
    for (strategy, _), record in done.items():
        theirs, ours = record.get("setup"), setups.get(strategy)
        if theirs is None or ours is None:
            continue
        theirs = {**UNNAMED_MEANS, **theirs}
        differ = sorted(k for k in theirs if theirs[k] != ours.get(k))
        if differ:
            said = ", ".join(f"{k} {theirs[k]!r} (this run: {ours.get(k)!r})" for k in differ)
            # A context sized to the machine's free memory can differ between runs: --ctx fixes it.
            resume = f", or --ctx {theirs['ctx']} to go on with them" if differ == ["ctx"] else ""
            raise UsageError(f"{path} holds {strategy} runs made with {said}: pass another --results to keep "
                             f"both{resume}")


# Settings a record made before they existed means as these: records of the problems' own format are not resumed
# by a run that asks for another (--format program).
UNNAMED_MEANS: dict[str, Any] = {"format": None}


def _attempt(problem: Problem, strategy: str, solve: Solve, checker: Check) -> dict[str, Any]:
    """The result record of one strategy on one problem; a solver or checker error counts as wrong."""
    record: dict[str, Any] = {
        "strategy": strategy, "problem_id": problem.id, "kind": problem.kind, "correct": False,
        "final_answer": None, "reference": problem.answer if problem.kind != "mbpp" else None,
        "generated_tokens": 0, "seconds": 0.0, "error": None, "extra": {}, "text": "",
    }
    start = time.perf_counter()
    try:
        outcome = solve(problem, strategy)
        record.update(
            final_answer=outcome.final_answer, generated_tokens=int(outcome.generated_tokens),
            seconds=float(outcome.seconds), extra=dict(outcome.extra), text=outcome.text,
        )
        record["correct"] = bool(checker(problem, outcome.text, outcome.final_answer))
    except Exception as error:  # noqa: BLE001 - one failing problem must not end the benchmark
        record["error"] = f"{type(error).__name__}: {error}"
        record["seconds"] = record["seconds"] or time.perf_counter() - start
    return record


def _append(handle: IO[str], record: dict[str, Any]) -> None:
    """Write one record as a line and make it durable before the next run starts."""
    try:
        line = json.dumps(record, ensure_ascii=False)
    except (TypeError, ValueError):
        line = json.dumps(record, ensure_ascii=False, default=repr)
    handle.write(line + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _reached(problem: Problem, record: dict[str, Any], right: Callable[[Problem, str], bool]) -> bool | None:
    """Whether a right answer is among the run's finished ones (every sample; A*'s finished paths).

    None where the run keeps no answers (direct) or checking one needs its program (MBPP).
    """
    answers = (record.get("extra") or {}).get("terminal_answers")
    if answers is None or problem.kind == "mbpp":
        return None
    return any(answer is not None and right(problem, answer) for answer in answers)  # `right` remembers repeats


def _answer_checker(checker: Check) -> Callable[[Problem, str], bool]:
    """`checker` on a bare answer, each (problem, answer) checked once: samples repeat, and sc and bon share theirs."""
    seen: dict[tuple[str, str], bool] = {}

    def right(problem: Problem, answer: str) -> bool:
        key = (problem.id, answer)
        if key not in seen:
            try:
                seen[key] = bool(checker(problem, "", answer))
            except Exception:  # noqa: BLE001 - as in _attempt, an answer the checker fails on counts as wrong
                seen[key] = False
        return seen[key]

    return right


def _scores(
    problems: Sequence[Problem], strategies: Sequence[str], done: dict[tuple[str, str], dict[str, Any]],
    checker: Check | None = None,
) -> tuple[list[StrategyScore], int]:
    """Each strategy's score over the problems that every strategy has finished; `reached` too given a checker."""
    by_id = {p.id: p for p in problems}
    right = None if checker is None else _answer_checker(checker)
    scored = [p.id for p in problems if all((s, p.id) in done for s in strategies)]
    scores = []
    for strategy in strategies:
        records = [done[(strategy, pid)] for pid in scored]
        reached = [] if right is None else [_reached(by_id[pid], r, right) for pid, r in zip(scored, records)]
        n, correct = len(records), sum(bool(r["correct"]) for r in records)
        low, high = wilson_interval(correct, n)
        scores.append(
            StrategyScore(
                strategy=strategy, n=n, correct=correct, accuracy=correct / n if n else 0.0,
                ci_low=low, ci_high=high,
                mean_tokens=sum(int(r["generated_tokens"]) for r in records) / n if n else 0.0,
                mean_seconds=sum(float(r["seconds"]) for r in records) / n if n else 0.0,
                errors=sum(r.get("error") is not None for r in records),
                reached=sum(reached) if reached and None not in reached else None,
            )
        )
    return scores, len(scored)


class _Bar:
    """A rich progress bar on stderr whose text shows each strategy's running score."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self.task = self.progress.add_task("accuracy", total=total)

    def show(self, completed: int, description: str) -> None:
        self.progress.update(self.task, completed=completed, description=description)


@contextmanager
def _progress_bar(show: bool, total: int) -> Iterator[_Bar | None]:
    if not show:
        yield None
        return
    bar = _Bar(total)
    with bar.progress:
        yield bar


def run_accuracy(
    problems: Sequence[Problem],
    strategies: Sequence[str],
    solve: Solve,
    results_path: Path | None = None,
    progress: bool | None = None,
    *,
    checker: Check = check,
    setups: Mapping[str, dict[str, Any]] | None = None,
    retry_errors: bool = False,
) -> AccuracyReport:
    """Run every strategy on every problem (problems outer, so a partial run is like for like) and score them.

    Each finished run is appended to `results_path` (JSONL) at once; runs already there are skipped,
    so a rerun resumes. `progress`: True shows a bar on stderr, False never, None when stderr is a tty.
    Ctrl-C stops after the current run and returns the report so far (`interrupted`). `setups` (per strategy: model,
    head and settings) go into each record; a results file whose records were made with another setup is refused.
    `retry_errors`: runs recorded with an error (a crash, a full KV cache) are run again; the new record, appended,
    replaces the old one for every reader.
    """
    strategies = list(strategies)
    if not strategies:
        raise UsageError("no strategies to run")
    for name, values in (("strategy", strategies), ("problem id", [p.id for p in problems])):
        seen: set[str] = set()
        for value in values:
            if value in seen:
                raise UsageError(f"{name} {value!r} appears twice")
            seen.add(value)
    done = _read_results(results_path) if results_path is not None else {}
    if setups is not None:
        _check_setup(done, setups, results_path)
    if retry_errors:
        for key in [key for key, record in done.items() if key[0] in strategies and record.get("error")]:
            del done[key]
    if isinstance(solve, PairedSolve):
        solve.done = set(done)  # as found: a partner this run records still shares its draws
    wanted = [(p, s) for p in problems for s in strategies]
    show = progress if progress is not None else sys.stderr.isatty()
    interrupted = False
    if results_path is not None:
        results_path.parent.mkdir(parents=True, exist_ok=True)
    opened = results_path.open("a", encoding="utf-8") if results_path is not None else nullcontext(None)
    with opened as handle, _progress_bar(show, len(wanted)) as bar:

        def report_progress() -> None:
            if bar is not None:
                scores, _ = _scores(problems, strategies, done)
                text = " · ".join(f"{s.strategy} {s.correct}/{s.n}" for s in scores)
                bar.show(sum((s, p.id) in done for p, s in wanted), text)

        report_progress()
        try:
            for problem, strategy in wanted:
                if (strategy, problem.id) in done:
                    continue
                record = _attempt(problem, strategy, solve, checker)
                if setups is not None and strategy in setups:
                    record["setup"] = setups[strategy]
                if handle is not None:
                    _append(handle, record)
                done[(strategy, problem.id)] = record
                report_progress()
        except KeyboardInterrupt:
            interrupted = True
    scores, scored = _scores(problems, strategies, done, checker)
    return AccuracyReport(
        scores=tuple(scores), problems=scored,
        pending=sum((s, p.id) not in done for p, s in wanted), interrupted=interrupted,
        results_path=str(results_path) if results_path is not None else None,
    )


def format_table(report: AccuracyReport) -> str:
    """The report as a plain-text table, one row per strategy."""
    header = ("strategy", "n", "correct", "accuracy", "95% CI", "tokens/problem", "s/problem", "errors", "reached")
    rows = [header] + [
        (
            s.strategy, str(s.n), str(s.correct), f"{100 * s.accuracy:.1f}%",
            f"[{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}]", f"{s.mean_tokens:.1f}", f"{s.mean_seconds:.2f}",
            str(s.errors), "-" if s.reached is None else str(s.reached),
        )
        for s in report.scores
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(s.reached is not None for s in report.scores):
        lines.append("(reached: problems with a right answer among the strategy's finished ones, chosen or not)")
    if report.pending:
        why = "interrupted" if report.interrupted else "incomplete"
        lines.append(
            f"({why}: {report.pending} runs not done; scored on the {report.problems} problems "
            "every strategy finished)"
        )
    return "\n".join(lines)
