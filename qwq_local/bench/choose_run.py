"""`qwq bench choose`: read banks, evaluate choosers and signals (`qwq_local.bench.choose`), print, plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import typer

from qwq_local.value.bank_labels import BANK_FILE, arrays_root, bank_states, feature_keys, load_hidden, read_bank
from qwq_local.bench.compare import Run, read_runs
from qwq_local.bench.choose import (
    BankProblem,
    ChooserReport,
    bank_scales,
    evaluate,
    format_reports,
    from_records,
    make_chooser,
    parse_chooser,
    parse_signal,
    sign_test,
    state_auc,
)
from qwq_local.errors import ExitCode, InputFileError, UsageError

if TYPE_CHECKING:
    from qwq_local.value.qhead import QHead


def head_signals(head: QHead) -> Callable[[Mapping[str, Any]], list[dict[str, float]]]:
    """Signals from a Q-value head over the bank's recorded hidden states: the value of the leaf's end state
    (`head`) and the lowest value along its path (`head_min`). Needs the bank's arrays in the user cache."""
    root = arrays_root()

    def signals(record: Mapping[str, Any]) -> list[dict[str, float]]:
        hidden = load_hidden(record, root, head.features)
        if hidden.shape[1] != head.weights.n_embd:
            raise UsageError(f"--head {head.path}: {head.weights.n_embd} wide, the bank's states {hidden.shape[1]}")
        return _leaf_values(record, head.predict(np.nan_to_num(hidden)))

    return signals


def _leaf_values(record: Mapping[str, Any], values: np.ndarray) -> list[dict[str, float]]:
    """Per leaf: the value of its end state (`head`) and the lowest value on its path (`head_min`)."""
    parents = {n["id"]: n["parent"] for n in record["nodes"]}
    out = []
    for leaf in record["leaves"]:
        chain, node = [], leaf["node"]
        while node is not None:
            chain.append(float(values[node]))
            node = parents[node]
        out.append({"head": float(values[leaf["node"]]), "head_min": min(chain)})
    return out


def cross_fitted_head_signals(records: Sequence[Mapping[str, Any]], folds: int, *, kind: str = "linear",
                              target: str = "max", seed: int = 0, l2: float = 1e-4, features: str = "last"
                              ) -> Callable[[Mapping[str, Any]], list[dict[str, float]]]:
    """`head` and `head_min` from heads trained on the banks' own states, each problem valued by a head that never
    saw it: the problems are dealt into `folds` folds and a head is trained (as `qwq train-head --bank` trains, its
    epoch chosen on part of the other folds) for each fold on all the others. So the head is judged on every problem
    of the bank, held out, instead of on the fifth that one head's test split would leave. `features`: which
    recorded states the heads read (see `load_hidden`)."""
    from qwq_local.value.training import train_head

    ids = sorted(str(r["problem_id"]) for r in records)
    if not 2 <= folds <= len(ids):
        raise UsageError(f"--head-folds must be between 2 and the bank's {len(ids)} problems, not {folds}")
    order = np.random.default_rng(seed).permutation(len(ids))
    fold_of = {ids[i]: n % folds for n, i in enumerate(order)}
    root = arrays_root()
    hidden = {str(r["problem_id"]): load_hidden(r, root, features) for r in records}  # each read once
    X, y_max, y_mean, groups = bank_states(records, root, hidden)
    if len(X) == 0:
        raise UsageError("--head-folds: the banks hold no hidden states to train on")
    y = y_max if target == "max" else y_mean
    fold = np.array([fold_of[g] for g in groups.tolist()])
    values: dict[str, list[dict[str, float]]] = {}
    for k in range(folds):
        try:
            weights, _ = train_head(X[fold != k], y[fold != k], groups[fold != k], kind=kind, seed=seed,
                                    epochs=200, l2=l2, test_fraction=0.0)
        except ValueError as exc:
            raise UsageError(f"--head-folds {folds}: cannot train the head of fold {k + 1}: {exc}") from None
        for record in records:
            problem = str(record["problem_id"])
            if fold_of[problem] == k:
                values[problem] = _leaf_values(record, weights.predict(np.nan_to_num(hidden[problem])))
    return lambda record: values[str(record["problem_id"])]


def run_choose(banks: Sequence[Path], choosers: Sequence[str], signals: Sequence[str], limit: int | None,
               plot: Path | None, as_json: bool, head: Path | None = None, baselines: Sequence[Path] = (),
               head_folds: int | None = None, head_features: str = "last") -> None:
    if head is not None and head_folds is not None:
        raise UsageError("--head and --head-folds: give one (a head file, or heads trained here on the bank)")
    try:
        feature_keys(head_features)
    except ValueError as exc:
        raise UsageError(f"--head-features: {exc}") from None
    if head_features != "last" and head_folds is None:
        raise UsageError("--head-features: only with --head-folds (a head file reads the states it was trained on)")
    named: set[str] = set()  # every signal the choosers and --signal name, checked against the bank below
    for name in choosers:
        try:
            named |= parse_chooser(name).names
        except ValueError as exc:
            raise UsageError(f"--chooser: {exc}") from None
    for name in signals:
        try:
            named |= {signal for signal, _ in parse_signal(name)}
        except ValueError as exc:
            raise UsageError(f"--signal: {exc}") from None
    if plot is not None:
        from qwq_local.bench.plot import check_can_plot

        check_can_plot(plot)
    records = []
    for bank in banks:
        file = bank / BANK_FILE if bank.is_dir() else bank
        if not file.exists():
            raise InputFileError(f"{bank}: no bank here (run `qwq bench bank --results {bank}` first)",
                                     ExitCode.FILE_NOT_FOUND)
        records += list(read_bank(file).values())
    if limit is not None:
        records = records[:limit]
    extra, left_out = None, 0
    if head is not None:
        from qwq_local.value.qhead import QHead

        loaded = QHead.load(head)
        seen = set(loaded.meta.problems)
        kept = [r for r in records if str(r["problem_id"]) not in seen]
        left_out = len(records) - len(kept)
        if left_out and not as_json:
            typer.echo(f"--head {head.name}: {left_out} problems it was trained on left out", err=True)
        if records and not kept:
            raise UsageError(f"--head {head}: it was trained on every problem of the bank; judge it on others "
                             "(or use --head-folds)")
        records, extra = kept, head_signals(loaded)
    if not records:
        raise UsageError("the bank holds no problems yet")
    if head_folds is not None:
        extra = cross_fitted_head_signals(records, head_folds, features=head_features)
    problems = from_records(records, extra)
    known = {name for problem in problems for leaf in problem.leaves for name in leaf.signals}
    if named - known:
        raise UsageError(f"no signal {', '.join(sorted(named - known))} in the bank (it has {', '.join(sorted(known))}"
                         f"{'' if extra else '; head and head_min need --head or --head-folds'})")
    reports, signal_reports, summary = evaluate(problems, choosers, signals)
    depths = sorted({n["depth"] for r in records for n in r["nodes"]})[:-1]
    states = [{"signal": name, "depth": d, "auc": auc, "pairs": pairs}
              for d in depths for name in signals for auc, pairs in [state_auc(records, name, d)] if pairs]
    compared = compare_with(problems, reports, choosers, read_runs(baselines)) if baselines else []
    if as_json:
        if head is not None:
            summary = {**summary, "left_out_trained_on": left_out}
        typer.echo(json.dumps({"summary": summary, "choosers": [asdict(r) for r in reports],
                               "signals": [asdict(s) for s in signal_reports], "states": states,
                               "baselines": compared}, indent=1))
    else:
        typer.echo(format_reports(reports, signal_reports, summary))
        if states:
            typer.echo("\nearly states (a step's own signal vs the share of right leaves below it; AUC over pairs):")
            for d in depths:
                row = [f"{s['signal']} {s['auc']:.2f}" for s in states if s["depth"] == d]
                pairs = next((s["pairs"] for s in states if s["depth"] == d), 0)
                typer.echo(f"  depth {d} ({pairs} pairs): " + " · ".join(row))
        if compared:
            typer.echo("\n" + format_baselines(compared))
    if plot is not None:
        plot_by_samples(reports, plot, f"{', '.join(b.name for b in banks)} · {len(problems)} problems")
        if not as_json:
            typer.echo(f"plot: {plot}")


def plot_by_samples(reports: Sequence[ChooserReport], path: Path, title: str) -> Path:
    """Accuracy against mean generated tokens as leaves are added (1 .. S), one line per chooser."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for report in reports:
        axes.plot(report.tokens_by_samples, [100 * a for a in report.by_samples], marker="o", markersize=3,
                  label=f"{report.name}: {100 * report.accuracy:.1f}%")
    axes.set_xlabel("mean generated tokens per problem (1 .. S leaves, shared prefixes counted once)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def compare_with(problems: Sequence[BankProblem], reports: Sequence[ChooserReport], choosers: Sequence[str],
                 baselines: Mapping[str, Mapping[str, Run]]) -> list[dict[str, Any]]:
    """Each chooser against each baseline strategy on the problems both have: accuracy, tokens, sign test."""
    scales = bank_scales(problems)
    rows = []
    for strategy, runs in baselines.items():
        shared = [p for p in problems if p.problem_id in runs]
        if not shared:
            continue
        base_right = [runs[p.problem_id].right for p in shared]
        base_tokens = sum(runs[p.problem_id].tokens for p in shared) / len(shared)
        bank_tokens = sum(p.generated_tokens for p in shared) / len(shared)
        for name in choosers:
            chooser = make_chooser(name)
            right = [bool(c is not None and c.correct) for c in (chooser(p.leaves, scales) for p in shared)]
            wins = sum(r and not b for r, b in zip(right, base_right))
            losses = sum(b and not r for r, b in zip(right, base_right))
            rows.append({"baseline": strategy, "chooser": name, "problems": len(shared),
                         "baseline_right": sum(base_right), "baseline_tokens": base_tokens,
                         "chooser_right": sum(right), "chooser_tokens": bank_tokens, "wins": wins,
                         "losses": losses, "p_value": sign_test(wins, losses)})
    return rows


def format_baselines(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"{'chooser':<24} {'baseline':<10} {'n':>4} {'chooser':>8} {'tokens':>7} {'baseline':>9} {'tokens':>7} "
             f"{'+/-':>8} {'p':>6}"]
    for r in rows:
        lines.append(f"{r['chooser']:<24} {r['baseline']:<10} {r['problems']:>4} {r['chooser_right']:>8} "
                     f"{r['chooser_tokens']:>7.0f} {r['baseline_right']:>9} {r['baseline_tokens']:>7.0f} "
                     f"{'+%d/-%d' % (r['wins'], r['losses']):>8} {r['p_value']:>6.3f}")
    return "\n".join(lines)
