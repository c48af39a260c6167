"""`qwq train-head`: rollout labels on the KV tree (resumable), then a numpy head written as GGUF.

Labels go to a JSONL store beside the head as each problem finishes, so an interrupted run goes on
from where it stopped; training reads every committed label.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import typer

from qwq_local import runtime
from qwq_local.config import Settings
from qwq_local.errors import ExitCode, InputFileError, QwqError, UsageError


MAX_FAILURES_IN_A_ROW = 3  # problems in a row whose labelling raised: the run stops with the error


def labels_path_for(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".gguf") + ".labels.jsonl")


def run_train_head(settings: Settings, *, data: str, problems: int, rollouts: int, out: Path,
                   labels: Path | None, kind: str, target: str, max_steps: int, reply_tokens: int,
                   train_only: bool, seed: int, epochs: int) -> None:
    from qwq_local.value.labels import LabelStore, model_identity

    if data in ("gsm8k", "math500", "mbpp"):
        raise UsageError(f"{data} is a test set: train on gsm8k-train or your own FILE.jsonl")
    if kind not in ("linear", "mlp"):
        raise UsageError(f"--kind must be linear or mlp, not {kind!r}")
    _check_target(target)
    if problems < 0 or not 1 <= rollouts <= 64 or max_steps < 1 or reply_tokens < 1 or epochs < 1:
        raise UsageError("--problems must be >= 0, --rollouts 1..64, --max-steps, --reply-tokens and --epochs >= 1")
    if out.is_dir() or not out.parent.is_dir():  # found now, not after hours of labelling
        raise UsageError(f"--out {out}: not a file in an existing directory")
    store = LabelStore(labels or labels_path_for(out))
    if train_only and (not store.path.exists() or len(store) == 0):
        raise UsageError(f"no labels in {store.path}: run without --train-only first")
    plan = runtime.plan_model(runtime.locate(settings.model, settings), settings)
    store.model = model_identity(plan.resolved.path)
    store.check_model()  # labels of another model's hidden states must not be added to, or train, this one's head
    kv_budget = runtime.kv_budget_tokens(plan, settings)
    if not train_only:
        _label(settings, plan, store, data, problems, rollouts, max_steps, reply_tokens, seed, kv_budget)
    _train(plan, store, out, data, kind, target, seed, epochs)


def _label(settings: Settings, plan: runtime.ModelPlan, store: Any, data: str, problems: int, rollouts: int,
           max_steps: int, reply_tokens: int, seed: int, kv_budget: int | None) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from qwq_local.bench.checks import check
    from qwq_local.bench.datasets import load_problems, problem_seed
    from qwq_local.engine.kvtree import KVTree
    from qwq_local.engine.policy import TreePolicy
    from qwq_local.prompts import build_question
    from qwq_local.search.answer import extract_final_answer
    from qwq_local.value.labels import LabelRow
    from qwq_local.value.rollouts import RolloutConfig, label_problem

    todo = [p for p in load_problems(data, problems) if p.id not in store.done_problems()]
    if not todo:
        typer.echo(f"labels: all {problems} problems already in {store.path}", err=True)
        return
    config = RolloutConfig(rollouts=rollouts, max_steps=max_steps, reply_tokens=reply_tokens)
    model = runtime.load(plan, settings, chat_ctx=runtime.SEARCH_ONLY_CTX)
    n_seq = min(rollouts + max_steps + 4, 256)
    started, states, skipped = time.perf_counter(), 0, []
    try:
        with KVTree(model, n_ctx=plan.n_ctx, n_seq_max=n_seq, kv_budget=kv_budget,
                    hidden=True) as tree, Progress(
            TextColumn("labels"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
            TimeRemainingColumn(), console=Console(stderr=True), transient=False, disable=not _tty(),
        ) as bar:
            task = bar.add_task("labels", total=len(todo), note="")
            for problem in todo:
                sampling = replace(settings.sampling, seed=problem_seed(problem.id, seed), max_tokens=reply_tokens)
                policy = TreePolicy(model, tree, sampling, thinks=plan.thinks, max_reply_tokens=reply_tokens)

                def is_correct(text: str, problem: Any = problem) -> bool:
                    if plan.thinks and "</think>" not in text:  # still thinking: no answer given yet
                        return False
                    return check(problem, text, extract_final_answer(text))

                try:
                    found = label_problem(policy, build_question(problem.prompt, problem.format), is_correct, config)
                except Exception as exc:  # one bad problem must not stop every resume at the same place
                    skipped.append(problem.id)
                    if len(skipped) >= MAX_FAILURES_IN_A_ROW:  # not the problems: the model or the machine
                        raise
                    bar.console.print(f"warning: problem {problem.id} skipped ({type(exc).__name__}: {exc})")
                    bar.update(task, advance=1)
                    continue
                finally:
                    policy.close()
                for skip in skipped:  # marked done (no labels) once a later problem shows the model works
                    store.append([], problem_id=skip)
                skipped.clear()
                store.append([LabelRow(problem.id, lab.step_index, lab.step_text, lab.q_max, lab.q_mean,
                                       len(lab.correct), lab.correct, np.asarray(lab.hidden, dtype=np.float32),
                                       terminal=lab.terminal)
                              for lab in found], problem_id=problem.id)
                states += len(found)
                bar.update(task, advance=1, note=f"{states} states · {tree.stats.evaluated_tokens:,} tok evaluated")
    finally:
        model.close()
    typer.echo(f"labels: {len(todo)} problems, {states} states in {time.perf_counter() - started:.0f} s "
               f"-> {store.path}", err=True)


def _train(plan: runtime.ModelPlan, store: Any, out: Path, data: str, kind: str, target: str, seed: int,
           epochs: int) -> None:
    from qwq_local.catalog.integrity import sha256_file
    from qwq_local.value.qhead import QHeadMeta, write_head
    from qwq_local.value.training import train_head

    X, y_max, y_mean, groups = store.load()
    if len(X) == 0:
        raise QwqError(f"no labels in {store.path}: run without --train-only first")
    y = y_max if target == "max" else y_mean
    try:
        weights, report = train_head(X, y, groups, kind=kind, seed=seed, epochs=epochs)
    except ValueError as exc:
        raise QwqError(f"cannot train on {len(X)} states from {len(set(groups))} problems: {exc}") from None
    meta = QHeadMeta(
        architecture=plan.info.architecture, n_embd=int(X.shape[1]), model_sha256=sha256_file(plan.resolved.path),
        training_data=f"{Path(data).name if data.endswith('.jsonl') else data}; Q={target} over rollouts",
        n_problems=len(set(groups.tolist())), n_states=len(X), metrics=report.head_metrics(),
    )
    write_head(out, weights, meta)
    m = report.head_metrics()
    typer.echo(f"head: {out} · {kind} · {len(X)} states ({float((y >= 0.5).mean()):.0%} positive) from "
               f"{meta.n_problems} problems · held-out " + " ".join(f"{k}={v:.3f}" for k, v in m.items()))


def run_head_info(path: Path, as_json: bool) -> None:
    import json

    from qwq_local.value.qhead import QHead

    info = QHead.load(path).describe()
    if as_json:  # a metric that could not be computed (NaN: one class held out) is null, as JSON allows
        info["metrics"] = {k: _finite(v) for k, v in (info.get("metrics") or {}).items()}
        typer.echo(json.dumps(info, indent=2, default=str, allow_nan=False))
        return
    metrics = info.pop("metrics", {}) or {}
    for key, value in info.items():
        typer.echo(f"{key:>16}: {value!r}" if key == "step_delimiter" else f"{key:>16}: {value}")
    for key, value in metrics.items():
        typer.echo(f"{'held-out ' + key:>16}: {value:.4f}")


def run_head_eval(path: Path, labels: Path, target: str, as_json: bool) -> None:
    import json

    from qwq_local.value.assess import assess
    from qwq_local.value.labels import LabelStore
    from qwq_local.value.qhead import QHead

    _check_target(target)
    if not labels.is_file():
        raise InputFileError(f"label store not found: {labels}", ExitCode.FILE_NOT_FOUND)
    head = QHead.load(path)
    rows = LabelStore(labels).rows()
    if not rows:
        raise InputFileError(f"no committed labels in {labels}", ExitCode.EMPTY_INPUT)
    X = np.stack([row.hidden for row in rows])
    y = np.array([row.q_max if target == "max" else row.q_mean for row in rows])
    found = assess(head.predict(X), y, np.array([row.terminal for row in rows]),
                   np.array([row.problem_id for row in rows], dtype=str))
    c = found.choice
    if as_json:
        typer.echo(json.dumps({
            "head": str(path), "labels": str(labels), "target": target,
            "subsets": {name: {"problems": n, "states": m.n, "positives": m.positives, "auc": _finite(m.auc),
                               "brier": _finite(m.brier), "ece": _finite(m.ece)}
                        for name, (n, m) in found.subsets.items()},
            "choice": {"problems": c.problems, "head_right": c.head_right, "chance": round(c.chance, 3)},
        }, indent=2, allow_nan=False))
        return
    typer.echo(f"{path.name} on {labels.name} (Q = {target} over rollouts)")
    typer.echo(f"{'states':>9} {'problems':>9} {'n':>6} {'positive':>9} {'AUC':>6} {'Brier':>6} {'ECE':>6}")
    for name, (n, m) in found.subsets.items():
        typer.echo(f"{name:>9} {n:>9} {m.n:>6} {m.positives / m.n:>9.0%} {m.auc:>6.3f} {m.brier:>6.3f} {m.ece:>6.3f}")
    if c.problems:
        typer.echo(f"choosing a reply: the head's top one is right in {c.head_right} of {c.problems} problems with "
                   f"right and wrong replies (a random pick: {c.chance:.1f})")


def _check_target(target: str) -> None:
    if target not in ("max", "mean"):
        raise UsageError(f"--target must be max or mean, not {target!r}")


def _finite(value: float) -> float | None:
    """A metric for JSON: one that could not be computed (NaN: one class only) is null."""
    import math

    return value if math.isfinite(value) else None


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()
