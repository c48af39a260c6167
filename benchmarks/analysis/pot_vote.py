"""Program-of-thought replies, run in the sandbox, against the tree's chain-of-thought replies (issue 20, rStar's idea).

`sample` asks the model, per problem, for 8 whole replies (QwQ's sampling, one batched decode on the KV tree, seed
problem_seed + 7) to a prompt that wants a Python program printing the answer; each program runs in the real sandbox
and its last printed line is the answer (a program that fails gives none). Resumable, one line per problem:

    QWQ_DATA_DIR=../shared/data python benchmarks/analysis/pot_vote.py sample --offset 200 --limit 39 \\
        benchmarks/runs/pot-gsm8k-dev201-qwen2.5-coder-0.5b.jsonl

`compare` votes, in seconds and without a model: first over every sampled problem, the programs' plain vote against
the vote weighted as the default A* weighs its paths (the odds of their tail confidence); then over the replies, the
bank's 8 tree replies of the same problems, and mixtures of the two:

    python benchmarks/analysis/pot_vote.py compare benchmarks/runs/pot-gsm8k-dev201-qwen2.5-coder-0.5b.jsonl \\
        benchmarks/runs/bank-gsm8k-dev201-qwen2.5-coder-0.5b/bank.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from qwq_local.bench.choose import from_records, sign_test, subset_tokens
from qwq_local.problems.checks import numbers_equal
from qwq_local.problems.datasets import load_problems, problem_seed
from qwq_local.problems.programs import printed_answer, run_reply_program
from qwq_local.search.answer import normalize_for_vote
from qwq_local.search.astar import value_weight
from qwq_local.search.protocol import Candidate
from qwq_local.value.confidence import ConfidenceScorer

POT = ("Write a Python program that solves the problem step by step: each step a short comment and the code "
       "computing it. The program must print only the final numeric answer.")
SAMPLES = 8


def program_answer(text: str, reference: str) -> dict:
    """Run the reply's program as `--format program` does (the product's sandboxed reader): the answer it printed,
    whether it ran, whether it is right."""
    run = run_reply_program(text)
    right = run.answer is not None and numbers_equal(run.answer, reference)
    return {"answer": run.answer, "correct": bool(right), "ran": bool(run.ran)}


def sample(out: Path, offset: int, limit: int, model_name: str) -> None:
    from qwq_local.app import runtime
    from qwq_local.config import load_settings
    from qwq_local.engine.kvtree import KVTree
    from qwq_local.engine.policy import TreePolicy
    from qwq_local.search.protocol import StepStop

    settings = load_settings({"model": model_name, "max_tokens": 512, "ctx": 4096})
    plan = runtime.plan_model(runtime.locate(settings.model, settings), settings)
    model = runtime.load(plan, settings, chat_ctx=runtime.SEARCH_ONLY_CTX)
    done = {json.loads(line)["problem_id"] for line in out.read_text().splitlines()} if out.exists() else set()
    stop = StepStop(delimiter=None, min_tokens=0, max_tokens=512)
    try:
        with out.open("a", encoding="utf-8") as handle:
            for problem in load_problems("gsm8k", offset + limit)[offset:]:
                if problem.id in done:
                    continue
                seeded = replace(settings.sampling, seed=problem_seed(problem.id) + 7)
                start = time.perf_counter()
                with KVTree(model, n_ctx=plan.n_ctx, n_seq_max=2 * SAMPLES + 4, hidden=False) as tree:
                    policy = TreePolicy(model, tree, seeded, thinks=plan.thinks)
                    try:
                        replies = policy.sample(policy.open(f"{problem.prompt.strip()}\n\n{POT}"), SAMPLES, stop)
                    finally:
                        policy.close()
                samples = []
                for reply in replies:
                    tail = reply.token_confidences[-32:]
                    samples.append({**program_answer(reply.text, problem.answer), "tokens": reply.n_tokens,
                                    "tail_conf": sum(tail) / len(tail) if tail else None, "text": reply.text})
                record = {"problem_id": problem.id, "reference": problem.answer, "samples": samples,
                          "seconds": time.perf_counter() - start}
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                print(problem.id, sum(s["correct"] for s in samples), f"/{SAMPLES}", flush=True)
    finally:
        model.close()


def _printed(answer: str | None) -> str | None:
    """A recorded last printed line read as `--format program` reads it (a sentence gives its number; records
    sampled before the script used the product's reader hold the raw line)."""
    return None if answer is None else printed_answer(answer)


def _key(answer: str | None) -> str | None:
    if answer is None:
        return None
    key = normalize_for_vote(answer.replace("$", ""))
    try:
        number = float(key)
    except ValueError:
        return key
    return str(round(number)) if abs(number - round(number)) < 1e-6 else str(round(number, 4))


def vote(replies: list[tuple[str | None, bool]], weights: list[float] | None = None) -> bool:
    """Whether the majority among `replies` (answer, right), each counting 1 or its weight, the earliest answer
    winning ties, is right."""
    counts: Counter[str] = Counter()
    right: dict[str, bool] = {}
    for i, (answer, correct) in enumerate(replies):
        key = _key(answer)
        if key is not None:
            counts[key] += 1.0 if weights is None else weights[i]
            right.setdefault(key, correct)
    return bool(counts) and right[max(counts, key=lambda k: (counts[k], -list(right).index(k)))]


def confidence_weight(tail_conf: float | None) -> float:
    """A program's vote in the default A*'s value vote: the odds of the confidence scorer's value of its reply
    (the recorded tail confidence is the mean over the same last 32 tokens the scorer reads)."""
    reply = Candidate(text="", branch=0, n_tokens=1, finished=True,
                      token_confidences=[] if tail_conf is None else [tail_conf])
    return value_weight(ConfidenceScorer().score("", [], reply))


def choosers(pot_path: Path) -> None:
    """Over every sampled problem: the programs' plain vote against the vote weighted as the default A* weighs its
    paths (the odds of their tail confidence), with the paired sign test."""
    plain = weighted = wins = losses = n = 0
    for line in pot_path.read_text().splitlines():
        samples = json.loads(line)["samples"]
        replies = [(_printed(s["answer"]), s["correct"]) for s in samples]
        a, b = vote(replies), vote(replies, [confidence_weight(s.get("tail_conf")) for s in samples])
        n, plain, weighted = n + 1, plain + a, weighted + b
        wins, losses = wins + (b and not a), losses + (a and not b)
    print(f"{n} problems: 8 programs, plain vote {plain}, weighted by tail confidence {weighted} "
          f"(+{wins}/-{losses}, sign test p = {sign_test(wins, losses):.3f})")


def compare(pot_path: Path, bank_path: Path) -> None:
    choosers(pot_path)
    bank = {json.loads(line)["problem_id"]: json.loads(line) for line in bank_path.read_text().splitlines()}
    rows: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    n = 0
    for line in pot_path.read_text().splitlines():
        record = json.loads(line)
        if record["problem_id"] not in bank:
            continue
        n += 1
        tree = from_records([bank[record["problem_id"]]])[0]
        cot = [(leaf.answer, leaf.correct) for leaf in tree.leaves]
        pot = [(_printed(s["answer"]), s["correct"]) for s in record["samples"]]
        cost = [s["tokens"] for s in record["samples"]]
        for name, tree_leaves, programs in (("tree of 8 CoT replies", 8, 0), ("8 programs", 0, 8), ("4 programs", 0, 4),
                                            ("4 CoT + 4 programs", 4, 4), ("8 CoT + 2 programs", 8, 2),
                                            ("8 CoT + 8 programs", 8, 8)):
            rows[f"{name}, vote"] += vote(cot[:tree_leaves] + pot[:programs])
            tokens[name] += subset_tokens(tree, tree.leaves[:tree_leaves]) + sum(cost[:programs])
        rows["reached: tree"] += any(c for _, c in cot)
        rows["reached: programs"] += any(c for _, c in pot)
        rows["right replies: tree"] += sum(c for _, c in cot)
        rows["right replies: programs"] += sum(c for _, c in pot)
        rows["programs that failed to run"] += sum(not s["ran"] for s in record["samples"])
    print(f"{n} problems in both")
    for name, count in rows.items():
        print(f"  {name:32s} {count}")
    for name, total in tokens.items():
        print(f"  tokens per problem, {name:22s} {total / max(n, 1):,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sampler = commands.add_parser("sample")
    sampler.add_argument("results", type=Path)
    sampler.add_argument("--offset", type=int, default=200)
    sampler.add_argument("--limit", type=int, default=32)
    sampler.add_argument("--model", default="qwen2.5-coder-0.5b")
    comparer = commands.add_parser("compare")
    comparer.add_argument("pot", type=Path)
    comparer.add_argument("bank", type=Path)
    args = parser.parse_args()
    if args.command == "sample":
        sample(args.results, args.offset, args.limit, args.model)
    else:
        compare(args.pot, args.bank)


if __name__ == "__main__":
    main()
