"""Do replies sampled on the KV tree answer as often as replies sampled by the chat engine? (issue 20, MATH-500)

On MATH-500's first 52 problems direct was right in 11 while sc@8's 416 tree replies were right 6.9 % of the time
(about 3.5 expected right single replies). `sample` draws, per problem, K replies three ways with QwQ's sampling and
the benchmark's prompt: `direct` (the chat engine, as `qwq solve`, one seed each), `tree` (one sc@K call: K children
decoded in one batch on the KV tree) and `tree1` (sc@1 K times: one tree reply each, no batching), one JSON line per
reply, appended:

    QWQ_DATA_DIR=../shared/data python benchmarks/analysis/math_paths.py sample 8 \\
        benchmarks/runs/math500-paths-qwen2.5-coder-0.5b.jsonl test/precalculus/807.json,test/algebra/2584.json

`count` prints the right replies per problem and way, in seconds:

    python benchmarks/analysis/math_paths.py count benchmarks/runs/math500-paths-qwen2.5-coder-0.5b.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from qwq_local.app import runtime
from qwq_local.app.chat import ChatSetup, open_chat
from qwq_local.app.search import BENCH_SEARCH, prepare_search, search_defaults, search_options
from qwq_local.app.solve import solve_direct, solve_sc_and_bon
from qwq_local.cli.root import settings_from
from qwq_local.problems.checks import check
from qwq_local.problems.datasets import load_problems, problem_seed

WAYS = ("direct", "tree", "tree1")


def sample(k: int, out: Path, ids: list[str], model: str) -> None:
    settings = settings_from(model=model, max_tokens=512, ctx=4096)  # as the MATH-500 benchmark runs
    problems = {p.id: p for p in load_problems("math500")}
    plan = runtime.plan_for(settings)

    def sc(n: int):  # noqa: ANN202 - a SearchSetup
        return prepare_search(plan, settings, "sc", replace(search_options(search_defaults("sc", BENCH_SEARCH,
                                                                                           None)), trajectories=n),
                              None, head=None)

    sc_k, sc_1 = sc(k), sc(1)
    with open_chat(ChatSetup(plan, None), settings, think=None) as (chat, turns), out.open("a") as records:
        for pid in ids:
            problem = problems[pid]
            for way_no, way in enumerate(WAYS):
                for j in range(1 if way == "tree" else k):
                    sampling = replace(settings.sampling, seed=problem_seed(pid, 1000 * (way_no + 1) + j))
                    start = time.perf_counter()
                    if way == "direct":
                        result = solve_direct(chat, problem.prompt, problem.format, sampling)
                        answers = [result.final_answer]
                    else:
                        result, _ = solve_sc_and_bon(sc_k if way == "tree" else sc_1, problem.prompt, problem.format,
                                                     sampling, turns.policies)
                        answers = result.search.terminal_answers if way == "tree" else [result.final_answer]
                    seconds = round(time.perf_counter() - start, 1)
                    for answer in answers:
                        records.write(json.dumps({
                            "id": pid, "way": way, "answer": answer,
                            "right": bool(answer) and bool(check(problem, "", answer)),
                            "tokens": result.generated_tokens, "seconds": seconds}) + "\n")
                    records.flush()


def count(path: Path) -> None:
    tally: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for key in ((row["id"], row["way"]), ("all", row["way"])):
            tally[key][0] += row["right"]
            tally[key][1] += 1
    ids = sorted({pid for pid, _ in tally if pid != "all"}) + ["all"]
    print(f"{'problem':32}" + "".join(f"{way:>10}" for way in WAYS))
    for pid in ids:
        cells = [tally.get((pid, way)) for way in WAYS]
        print(f"{pid:32}" + "".join(f"{c[0]:>5}/{c[1]:<4}" if c else f"{'-':>10}" for c in cells))
    for way in WAYS:
        right, n = tally.get(("all", way), (0, 0))
        print(f"{way}: {right}/{n} right ({100 * right / max(n, 1):.1f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("k", type=int)
    s.add_argument("out", type=Path)
    s.add_argument("ids")
    s.add_argument("--model", default="qwen2.5-coder-0.5b")
    c = sub.add_parser("count")
    c.add_argument("records", type=Path)
    args = parser.parse_args()
    if args.command == "sample":
        sample(args.k, args.out, args.ids.split(","), args.model)
    else:
        count(args.records)


if __name__ == "__main__":
    main()
