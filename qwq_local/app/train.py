"""Training a Q-value head (`qwq train-head`): rollout labels on the KV tree (resumable), then a numpy head written as GGUF.

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

from qwq_local.app import runtime
from qwq_local.config import Settings
from qwq_local.errors import ExitCode, QwqError, UsageError


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
    check_target(target)
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

    from qwq_local.problems.checks import check
    from qwq_local.problems.datasets import load_problems, problem_seed
    from qwq_local.dialog.think import CLOSE
    from qwq_local.engine.kvtree import KVTree
    from qwq_local.engine.policy import TreePolicy
    from qwq_local.problems.prompts import build_question
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
                    if plan.thinks and CLOSE not in text:  # still thinking: no answer given yet
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
        raise QwqError(f"no labels in {store.path}: run without --train-only first", ExitCode.EMPTY_INPUT)
    y = y_max if target == "max" else y_mean
    try:
        weights, report = train_head(X, y, groups, kind=kind, seed=seed, epochs=epochs)
    except ValueError as exc:
        raise QwqError(f"cannot train on {len(X)} states from {len(set(groups))} problems: {exc}",
                       ExitCode.BAD_DATA) from None
    meta = QHeadMeta(
        architecture=plan.info.architecture, n_embd=int(X.shape[1]), model_sha256=sha256_file(plan.resolved.path),
        training_data=f"{Path(data).name if data.endswith('.jsonl') else data}; Q={target} over rollouts",
        n_problems=len(set(groups.tolist())), n_states=len(X), metrics=report.head_metrics(),
    )
    write_head(out, weights, meta)
    m = report.head_metrics()
    typer.echo(f"head: {out} · {kind} · {len(X)} states ({float((y >= 0.5).mean()):.0%} positive) from "
               f"{meta.n_problems} problems · held-out " + " ".join(f"{k}={v:.3f}" for k, v in m.items()))


def check_target(target: str) -> None:
    if target not in ("max", "mean"):
        raise UsageError(f"--target must be max or mean, not {target!r}")


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()
