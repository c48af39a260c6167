"""Training a Q-value head (`qwq train-head`): rollout labels on the KV tree (resumable), then a numpy head written as GGUF.

Labels go to a JSONL store beside the head as each problem finishes, so an interrupted run goes on
from where it stopped; training reads every committed label.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qwq_local.app import runtime
from qwq_local.config import Settings
from qwq_local.errors import ExitCode, QwqError, UsageError


MAX_FAILURES_IN_A_ROW = 3  # problems in a row whose labelling raised: the run stops with the error


def _quiet(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class TrainEvents:
    """What training tells its front end: lines to show, and the labelling's progress (problems done)."""

    say: Callable[[str], None] = _quiet
    start: Callable[[int], None] = _quiet  # the number of problems to label
    advance: Callable[[str], None] = _quiet  # one more problem done, with a note


def labels_path_for(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".gguf") + ".labels.jsonl")


def run_train_head(settings: Settings, *, data: str, problems: int, rollouts: int, out: Path,
                   labels: Path | None, kind: str, target: str, max_steps: int, reply_tokens: int,
                   train_only: bool, seed: int, epochs: int, banks: Sequence[Path] = (),
                   events: TrainEvents = TrainEvents(), features: str = "last") -> str:
    """Label (unless `train_only`) and train; returns the line that describes the head written."""
    from qwq_local.value.labels import LabelStore, model_identity

    if banks:
        return train_from_banks(settings, banks, out=out, kind=kind, target=target, seed=seed, epochs=epochs,
                                events=events, features=features)
    if features != "last":
        raise UsageError("--features: only with --bank (rollout labels keep a step's last state)")

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
        _label(settings, plan, store, data, problems, rollouts, max_steps, reply_tokens, seed, kv_budget, events)
    return _train(plan, store, out, data, kind, target, seed, epochs, events)


def _label(settings: Settings, plan: runtime.ModelPlan, store: Any, data: str, problems: int, rollouts: int,
           max_steps: int, reply_tokens: int, seed: int, kv_budget: int | None, events: TrainEvents) -> None:
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
        events.say(f"labels: all {problems} problems already in {store.path}")
        return
    config = RolloutConfig(rollouts=rollouts, max_steps=max_steps, reply_tokens=reply_tokens)
    model = runtime.load(plan, settings, chat_ctx=runtime.SEARCH_ONLY_CTX)
    n_seq = min(rollouts + max_steps + 4, 256)
    started, states, skipped = time.perf_counter(), 0, []
    try:
        with KVTree(model, n_ctx=plan.n_ctx, n_seq_max=n_seq, kv_budget=kv_budget, hidden=True) as tree:
            events.start(len(todo))
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
                    events.say(f"warning: problem {problem.id} skipped ({type(exc).__name__}: {exc})")
                    events.advance("")
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
                events.advance(f"{states} states · {tree.stats.evaluated_tokens:,} tok evaluated")
    finally:
        model.close()
    events.say(f"labels: {len(todo)} problems, {states} states in {time.perf_counter() - started:.0f} s "
               f"-> {store.path}")


def train_from_banks(settings: Settings, banks: Sequence[Path], *, out: Path, kind: str, target: str, seed: int,
                     epochs: int, events: TrainEvents = TrainEvents(), features: str = "last") -> str:
    """Train a head on the states of search banks (`qwq bench bank` on training problems): Monte-Carlo labels;
    `features`: the state at a step's last token (last) or the mean over its tokens (mean)."""
    from qwq_local.value.bank_labels import arrays_root, bank_states, read_bank
    from qwq_local.value.qhead import pooling_for

    try:
        pooling = pooling_for(features)
    except ValueError as exc:
        raise UsageError(f"--features {exc}") from None
    if kind not in ("linear", "mlp"):
        raise UsageError(f"--kind must be linear or mlp, not {kind!r}")
    check_target(target)
    records = []
    for bank in banks:
        found = read_bank(bank)
        if not found:
            raise UsageError(f"--bank {bank}: no bank lines there")
        records += list(found.values())
    datasets = {str(r.get("setup", {}).get("data")) for r in records}
    if datasets & {"gsm8k", "math500", "mbpp"}:
        raise UsageError(f"--bank: {', '.join(sorted(datasets))} holds test problems: bank gsm8k-train instead")
    plan = runtime.plan_model(runtime.locate(settings.model, settings), settings)
    X, y_max, y_mean, groups = bank_states(records, arrays_root(), features=features)
    if len(X) == 0:
        raise QwqError("the banks hold no states with hidden states", ExitCode.EMPTY_INPUT)
    if X.shape[1] != plan.info.n_embd:
        raise UsageError(f"--bank: its hidden states are {X.shape[1]} wide, {settings.model}'s {plan.info.n_embd}")
    return _train(plan, (X, y_max, y_mean, groups), out, "bank of " + ", ".join(sorted(datasets)), kind, target, seed,
                  epochs, events, labelled_by="the leaves below", pooling=pooling)


def _train(plan: runtime.ModelPlan, store: Any, out: Path, data: str, kind: str, target: str, seed: int,
           epochs: int, events: TrainEvents, labelled_by: str = "rollouts", pooling: str = "last_token_of_step") -> str:
    """Train on a label store (or ready (X, y_max, y_mean, groups) arrays) and write the head."""
    from qwq_local.catalog.integrity import sha256_file
    from qwq_local.value.qhead import QHeadMeta, write_head
    from qwq_local.value.training import train_head

    X, y_max, y_mean, groups = store if isinstance(store, tuple) else store.load()
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
        training_data=f"{Path(data).name if data.endswith('.jsonl') else data}; Q={target} over {labelled_by}",
        n_problems=len(set(groups.tolist())), n_states=len(X), metrics=report.head_metrics(), pooling=pooling,
        problems=tuple(sorted(set(groups.tolist()) - {str(g) for g in report.test_groups})),
    )
    write_head(out, weights, meta)
    m = report.head_metrics()
    return (f"head: {out} · {kind} · {len(X)} states ({float((y >= 0.5).mean()):.0%} positive) from "
            f"{meta.n_problems} problems · held-out " + " ".join(f"{k}={v:.3f}" for k, v in m.items()))


def check_target(target: str) -> None:
    if target not in ("max", "mean"):
        raise UsageError(f"--target must be max or mean, not {target!r}")
