"""Widening judged offline: each default-A* tree's vote topped up with the problem's recorded independent replies.

Reads two results files of the same problems, model, sampling and per-problem seeds: the tree's (its finished paths'
answers and values) and the baselines' (direct's reply and sc@8's eight replies). For each rule it prints how many
problems it gets right and its tokens per problem, counting each added reply at sc@8's mean reply cost. No model runs:

    QWQ_DATA_DIR=../shared/data python benchmarks/analysis/widen_offline.py \\
        benchmarks/runs/gsm8k-200-astar-default-qwen2.5-coder-0.5b.jsonl benchmarks/runs/gsm8k-200-head-qwen2.5-coder-0.5b.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from qwq_local.problems.checks import check
from qwq_local.problems.datasets import Problem
from qwq_local.search.answer import normalize_for_vote
from qwq_local.search.astar import value_weight


def read(path: Path) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        out[record["strategy"]][record["problem_id"]] = record
    return out


def vote(items: list[tuple[str | None, float]]) -> tuple[str | None, float]:
    """The answer with the most weight, and its share of the weight."""
    totals: dict[str, float] = defaultdict(float)
    first: dict[str, str] = {}
    for answer, weight in items:
        if answer is not None:
            key = normalize_for_vote(answer)
            first.setdefault(key, answer)
            totals[key] += weight
    if not totals:
        return None, 0.0
    best = max(totals, key=lambda k: (totals[k], -list(first).index(k)))
    return first[best], totals[best] / sum(totals.values())


def main(tree_file: Path, base_file: Path) -> None:
    tree, base = read(tree_file)["astar"], read(base_file)
    ids = sorted(set(tree) & set(base["sc@8"]) & set(base["direct"]))

    def right(pid: str, answer: str | None) -> bool:
        record = tree[pid]
        problem = Problem(id=pid, kind=record["kind"], prompt="", answer=str(record["reference"]))
        try:
            return answer is not None and check(problem, "", answer)
        except Exception:  # noqa: BLE001 - as bench accuracy: an answer the checker fails on is wrong
            return False

    def tree_items(pid: str, power: float) -> list[tuple[str | None, float]]:
        extra = tree[pid]["extra"]
        weights = [value_weight(v, power) for v in extra["terminal_values"]]
        mean = sum(weights) / len(weights) if weights else 1.0
        return [(a, w / mean) for a, w in zip(extra["terminal_answers"], weights)]

    def replies(pid: str) -> list[str | None]:
        return [base["direct"][pid]["final_answer"], *base["sc@8"][pid]["extra"]["terminal_answers"]]

    def reply_cost(pid: str) -> float:
        return base["sc@8"][pid]["generated_tokens"] / 8

    def report(name: str, choose) -> None:
        outcomes = [choose(pid) for pid in ids]
        hits = sum(right(pid, answer) for pid, (answer, _) in zip(ids, outcomes))
        print(f"{name:58s} {hits:4d} right  {sum(t for _, t in outcomes) / len(ids):7.0f} tokens")

    print(f"{len(ids)} problems in both files")
    report("sc@8", lambda p: (base["sc@8"][p]["final_answer"], base["sc@8"][p]["generated_tokens"]))
    report("sc@9 (direct's reply + sc@8's eight)",
           lambda p: (vote([(a, 1.0) for a in replies(p)])[0], 9 * reply_cost(p)))
    report("the tree alone (odds)", lambda p: (vote(tree_items(p, 1.0))[0], tree[p]["generated_tokens"]))
    for power, label in ((1.0, "odds"), (0.5, "sqrt-odds")):
        for settle in (0.6,):
            for most in (2, 3):
                def widened(p: str, power: float = power, settle: float = settle, most: int = most):
                    items, tokens = tree_items(p, power), tree[p]["generated_tokens"]
                    for answer in replies(p)[:most]:
                        if vote(items)[1] >= settle:
                            break
                        items, tokens = items + [(answer, 1.0)], tokens + reply_cost(p)
                    return vote(items)[0], tokens
                report(f"tree + up to {most} replies while the leader holds < {settle} ({label})", widened)
        report(f"tree + 2 replies always ({label})",
               lambda p, power=power: (vote(tree_items(p, power) + [(a, 1.0) for a in replies(p)[:2]])[0],
                                       tree[p]["generated_tokens"] + 2 * reply_cost(p)))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
