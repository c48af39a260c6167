"""`qwq bench bank`: sample the bank tree of each problem once and record it, resumable problem by problem.

DIR/bank.jsonl holds one line per problem (steps' text and statistics, leaves' answers and correctness: the compact
part, committed under benchmarks/); the per-token statistics and hidden states go to an .npz per problem in the
user cache (bulky; the same command rebuilds them from the texts where they are missing: hidden states only, by
decoding each step's text after its parent's, seconds a problem instead of sampling again). Besides the state at a
step's last token they hold the mean state over the step's tokens, and the same two of a middle layer (the output
of block n_layer // 2, through llama.cpp's eval callback); arrays from before these were recorded get them added by
the same replay, keeping what sampling recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qwq_local.app import runtime
from qwq_local.bench.bank import (BankNode, leaf_count, leaves, path, replay_tree, sample_tree, summarize,
                                  token_table)
from qwq_local.config import Settings
from qwq_local.errors import ExitCode, InputFileError, UsageError
from qwq_local.problems.checks import check
from qwq_local.problems.datasets import Problem, load_problems, problem_seed
from qwq_local.problems.prompts import build_question
from qwq_local.search.answer import extract_final_answer
from qwq_local.search.protocol import StepLM, StepStop
from qwq_local.value.bank_labels import BANK_FILE, arrays_root, read_bank

def bank_record(problem: Problem, nodes: Sequence[BankNode], shape: Sequence[int], setup: dict[str, Any],
                generated: int, evaluated: int, seconds: float, arrays: str | None) -> dict[str, Any]:
    """The compact record of one problem's tree: every step's text and statistics, every leaf's answer."""
    out_leaves = []
    for leaf in leaves(nodes):
        steps = path(nodes, leaf)
        text = "".join(step.text for step in steps)
        answer = extract_final_answer(text)
        try:
            right = bool(check(problem, text, answer))
        except Exception:  # noqa: BLE001 - a checker failure counts as wrong, as in qwq bench accuracy
            right = False
        out_leaves.append({"node": leaf.id, "answer": answer, "correct": right, "finished": leaf.finished,
                           "tokens": sum(step.n_tokens for step in steps),
                           "stats": _rounded(summarize(token_table(steps)))})
    return {
        "problem_id": problem.id, "reference": problem.answer if problem.kind != "mbpp" else None,
        "shape": list(shape), "setup": setup,
        "nodes": [{"id": n.id, "parent": n.parent, "depth": n.depth, "n_tokens": n.n_tokens, "finished": n.finished,
                   "text": n.text, "stats": _rounded(summarize(n.tokens))} for n in nodes],
        "leaves": out_leaves, "generated_tokens": generated, "evaluated_tokens": evaluated,
        "seconds": round(seconds, 2), "arrays": arrays,
    }


STATES = ("hidden", "hidden_mean", "hidden_mid", "hidden_mid_mean")  # the BankNode fields the arrays keep


def save_arrays(target: Path, nodes: Sequence[BankNode], keep: Path | None = None, mid_layer: int = -1) -> None:
    """Per-token statistics (joined, with offsets) and the hidden states of each step (NaN where none), float16: the
    last layer's at its last token and their mean over its tokens, the same of a middle layer (`mid_layer`, -1:
    none). `keep`: an older arrays file whose token statistics and step-end states stay (a replay that only adds
    the newer states keeps what sampling recorded)."""
    arrays = {"offsets": np.cumsum([0] + [n.n_tokens for n in nodes]),
              "tokens": token_table(nodes).astype(np.float16), "mid_layer": np.asarray(mid_layer),
              **{key: _stacked([getattr(n, key) for n in nodes]) for key in STATES}}
    if keep is not None:
        try:
            with np.load(keep) as old:
                arrays.update({k: old[k] for k in ("offsets", "tokens", "hidden")})
        except (OSError, ValueError, KeyError):  # unreadable or incomplete: the replay's arrays stand whole
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with partial.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    partial.replace(target)


def _stacked(rows: Sequence[Any]) -> np.ndarray:
    width = next((len(row) for row in rows if row is not None), 0)
    out = np.full((len(rows), width), np.nan, dtype=np.float16)
    for i, row in enumerate(rows):
        if row is not None:
            out[i] = np.asarray(row, dtype=np.float16)
    return out


def _complete(file: Path) -> bool:
    try:
        with np.load(file) as arrays:
            return all(key in arrays.files for key in STATES)
    except (OSError, ValueError):  # unreadable or missing: rebuilt whole
        return False


def tap_layer(n_layer: int) -> int:
    """The middle layer a bank records beside the last: the output of block n_layer // 2."""
    return n_layer // 2


def run_bank(settings: Settings, data: str, offset: int, limit: int | None, shape: tuple[int, ...], results: Path,
             stop: StepStop, echo: Callable[[str], None]) -> list[dict[str, Any]]:
    """Sample the bank of problems offset+1 .. offset+limit into `results`, skipping those already there."""
    if results.exists() and not results.is_dir():
        raise InputFileError(f"--results {results}: give a directory", ExitCode.USAGE)
    problems = load_problems(data, None if limit is None else offset + limit)[offset:]
    if not problems:
        raise UsageError(f"{data}: no problems after the first {offset}")
    plan = runtime.plan_model(runtime.locate(settings.model, settings), settings)
    sampling = settings.sampling
    setup = {"model": plan.resolved.path.name, "data": data, "shape": list(shape), "temperature": sampling.temperature,
             "top_p": sampling.top_p, "top_k": sampling.top_k, "min_p": sampling.min_p,
             "max_tokens": sampling.max_tokens, "step_min_tokens": stop.min_tokens, "step_max_tokens": stop.max_tokens}
    results.mkdir(parents=True, exist_ok=True)
    bank_path = results / BANK_FILE
    done = read_bank(bank_path, repair=True)
    for pid, record in done.items():
        theirs = record.get("setup", {})
        differ = sorted(k for k in setup if k in theirs and theirs[k] != setup[k])
        if differ:
            raise UsageError(f"{bank_path} holds problem {pid} sampled with other settings "
                             f"({', '.join(differ)}): pass another --results")
    todo = [p for p in problems if p.id not in done]
    key = hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:10]
    arrays_dir = arrays_root() / f"{results.resolve().name}-{key}"
    # The arrays live in the user cache: a bank committed elsewhere has none here, and they are rebuilt from its texts.
    # Arrays from before the mean and middle-layer states were recorded get them added (what was sampled stays).
    lost = [done[p.id] for p in problems if p.id in done and done[p.id].get("arrays")
            and not _complete(arrays_root() / done[p.id]["arrays"])]
    older = sum((arrays_root() / record["arrays"]).is_file() for record in lost)
    echo(f"bank: {len(problems) - len(todo)} of {len(problems)} problems done; arrays in {arrays_dir}"
         + (f" ({len(lost)} to rebuild{f', {older} of them to add newer states to' if older else ''})"
            if lost else ""))
    if not todo and not lost:
        return [done[p.id] for p in problems]
    from qwq_local.engine.kvtree import KVTree
    from qwq_local.engine.policy import TreePolicy

    model = runtime.load(plan, settings, chat_ctx=runtime.SEARCH_ONLY_CTX)
    reply_stop = StepStop(delimiter=None, min_tokens=0, max_tokens=sampling.max_tokens, end_think=stop.end_think)
    by_id = {p.id: p for p in problems}
    layer = tap_layer(model.n_layer)
    try:
        for number, record in enumerate(lost, 1):
            problem, start = by_id[record["problem_id"]], time.perf_counter()
            with KVTree(model, n_ctx=plan.n_ctx, n_seq_max=8, hidden=True, tap_layer=layer) as tree:
                policy = TreePolicy(model, tree, sampling, thinks=plan.thinks)
                try:
                    nodes = replay_tree(build_question(problem.prompt, problem.format), policy, record)
                finally:
                    policy.close()
            target = arrays_root() / record["arrays"]
            save_arrays(target, nodes, keep=target if target.is_file() else None, mid_layer=layer)
            echo(f"[rebuilt {number}/{len(lost)}] {problem.id}: hidden states of {len(nodes)} steps from their "
                 f"texts, {time.perf_counter() - start:.0f} s")
        with bank_path.open("a", encoding="utf-8") as handle:
            for number, problem in enumerate(todo, 1):
                seeded = replace(sampling, seed=problem_seed(problem.id) if sampling.seed is None else sampling.seed)
                start = time.perf_counter()
                with KVTree(model, n_ctx=plan.n_ctx, n_seq_max=min(2 * leaf_count(shape) + 4, 256),
                            hidden=True, tap_layer=layer) as tree:
                    policy = TreePolicy(model, tree, seeded, thinks=plan.thinks)
                    try:
                        nodes = sample_problem(problem, policy, shape, stop, reply_stop)
                        stats = policy.stats
                    finally:
                        policy.close()
                seconds = time.perf_counter() - start
                name = f"{_safe(problem.id)}.npz"
                save_arrays(arrays_dir / name, nodes, mid_layer=layer)
                record = bank_record(problem, nodes, shape, setup, stats.generated_tokens, stats.evaluated_tokens,
                                     seconds, f"{arrays_dir.name}/{name}")
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
                done[problem.id] = record
                right = sum(leaf["correct"] for leaf in record["leaves"])
                echo(f"[{number}/{len(todo)}] {problem.id}: {right}/{len(record['leaves'])} leaves right, "
                     f"{stats.generated_tokens} tokens, {seconds:.0f} s")
    finally:
        model.close()
    return [done[p.id] for p in problems]


def sample_problem(problem: Problem, lm: StepLM, shape: Sequence[int], stop: StepStop,
                   reply_stop: StepStop) -> list[BankNode]:
    """The bank tree of one problem on any StepLM (tests drive it with a scripted LM)."""
    return sample_tree(build_question(problem.prompt, problem.format), lm, shape, stop, reply_stop)


def _safe(problem_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in problem_id)


def _rounded(stats: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 4) for k, v in stats.items()}
