"""The remote engine against `qwq serve`, started by the test on the tiny model: A* and sc end to end, greedy equal
to the local engine, the server's prefix-cache counts read back, and a server killed mid-search.

`qwq serve` refuses `n > 1` (400), so the engine takes its concurrent-requests path; its text completions give
the tokens' log-probs (the confidence scorer's) and vLLM's stop_reason; it reports
`usage.prompt_tokens_details.cached_tokens`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from qwq_local.cli import main
from qwq_local.errors import ExitCode
from test_serve_openai import KEY, MODEL, Server

pytestmark = [pytest.mark.model, pytest.mark.slow]

REPO = Path(__file__).parent.parent
NATALIA = REPO / "examples" / "natalia.md"


def completions(server: Server) -> int:
    return server.log.read_text().count("POST /v1/completions 200")


@pytest.fixture(scope="module")
def qwq_serve(smollm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(smollm_path.parent.parent, tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        yield running
    finally:
        running.stop()


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def on(server: Server) -> list[str]:
    return ["-m", MODEL, "--engine", server.url, "--api-key", KEY]


def test_sc_end_to_end(qwq_serve: Server, capsys: pytest.CaptureFixture[str]) -> None:
    before = completions(qwq_serve)
    code, out, err = run_cli(["solve", str(NATALIA), *on(qwq_serve), "-s", "sc", "-N", "2", "--max-tokens", "32",
                              "--seed", "7", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["strategy"] == "sc" and len(report["terminal_answers"]) == 2
    assert report["generated_tokens"] > 0 and report["tokens"]["prompt"] > 20
    assert completions(qwq_serve) - before >= 2  # n = 2 refused: one request per reply


def test_astar_end_to_end(qwq_serve: Server, capsys: pytest.CaptureFixture[str]) -> None:
    before = completions(qwq_serve)
    code, out, err = run_cli(["solve", str(NATALIA), *on(qwq_serve), "-s", "astar", "-K", "2", "-N", "2",
                              "--max-expansions", "3", "--max-tokens", "40", "--seed", "3", "--scorer", "rules",
                              "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["strategy"] == "astar" and report["scorer"] == "rules"
    assert report["expansions"] >= 1 and report["nodes"] >= 3 and report["terminal_answers"]
    assert completions(qwq_serve) - before >= 2 * report["expansions"]


def test_greedy_matches_the_local_engine(qwq_serve: Server, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    problem = tmp_path / "sum.md"
    problem.write_text("What is 12 + 30? Answer with the number.")
    common = [str(problem), "-m", MODEL, "--temperature", "0", "--max-tokens", "40", "--format", "plain", "--json"]
    code, out, err = run_cli(["solve", *common], capsys)
    assert code == 0, err
    local = json.loads(out)
    code, out, err = run_cli(["solve", *common, "--engine", qwq_serve.url, "--api-key", KEY], capsys)
    assert code == 0, err
    remote = json.loads(out)
    assert remote["answer"] == local["answer"] and local["answer"]
    assert remote["tokens"]["prompt"] == local["tokens"]["prompt"]


def test_bench_engine_reads_the_servers_cache_hits(qwq_serve: Server, smollm_path: Path) -> None:
    from qwq_local.bench.engine_bench import SearchShape
    from qwq_local.bench.remote_bench import run_remote_search
    from qwq_local.config import Sampling
    from qwq_local.engine.remote_client import CompletionServer
    from qwq_local.engine.vocab import GGUFVocab

    shape = SearchShape(prompt_tokens=60, depth=3, branching=2, step_tokens=12, expansions=3, seed=3)
    with CompletionServer(qwq_serve.url, KEY) as server, GGUFVocab(smollm_path) as vocab:
        row = run_remote_search(server, vocab, shape, Sampling(seed=1), model=MODEL)
    assert row["n_gt_1"] is False and row["requests"] == shape.expansions * shape.branching
    evaluated = row["server_evaluated_tokens"]
    assert evaluated is not None  # usage.prompt_tokens_details.cached_tokens
    # it reuses the previous request's prefix: it evaluates less than it is sent, more than the tree's tokens
    assert row["distinct_tokens"] <= evaluated < row["sent_tokens"]
    assert 1.0 <= row["recompute_ratio"] < row["recompute_ratio_without_cache"]


def test_a_server_killed_mid_search_is_one_line_and_its_exit_code(smollm_path: Path, tmp_path: Path) -> None:
    server = Server(smollm_path.parent.parent, tmp_path / "serve.log")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwq_local", "solve", str(NATALIA), *on(server), "-s", "astar", "-K", "2", "-N", "6",
         "--max-expansions", "200", "--max-tokens", "2000", "--scorer", "rules"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while completions(server) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the search ended before the server was killed"
        server.process.kill()
        server.process.wait()
        _, err = proc.communicate(timeout=120)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.ENGINE_UNREACHABLE, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert f"127.0.0.1:{server.port}" in err


def test_steps_carry_the_servers_token_log_probs_and_a_stop_is_not_the_end(qwq_serve: Server,
                                                                           smollm_path: Path) -> None:
    """qwq serve gave no log-probs: on it the confidence scorer weighed every path alike."""
    from qwq_local.config import Sampling
    from qwq_local.engine.remote import RemotePolicy
    from qwq_local.engine.remote_client import CompletionServer
    from qwq_local.engine.vocab import GGUFVocab
    from qwq_local.search.protocol import StepStop

    step = StepStop(delimiter="\n\n", min_tokens=4, max_tokens=96)
    question = "List three fruits, one per paragraph, with a sentence about each."
    with CompletionServer(qwq_serve.url, KEY) as server, GGUFVocab(smollm_path) as vocab:
        policy = RemotePolicy(server, vocab, Sampling(temperature=0.7, seed=5, max_tokens=300), thinks=False,
                              model=MODEL)
        steps = policy.sample(policy.open(question), 2, step)
    assert policy.top_logprobs == 20  # asked for and given
    for candidate in steps:
        assert candidate.n_tokens > 0 and len(candidate.token_logprobs) == candidate.n_tokens
        assert all(lp <= 0 for lp in candidate.token_logprobs) and min(candidate.token_logprobs) < 0
        assert len(candidate.token_confidences) == candidate.n_tokens and min(candidate.token_confidences) > 0
    # a step that ended at its blank line goes on (finish_reason "stop" with stop_reason "\n\n", not EOS)
    assert any(c.text.endswith("\n\n") and not c.finished for c in steps), steps


def test_each_completion_gets_its_own_tokens_log_probs(qwq_serve: Server) -> None:
    """The engine's token list was swapped only when its generator first ran, after the service had taken the old
    one: each request got the previous request's tokens."""
    import httpx

    texts, tokens = [], []
    for prompt in ("The capital of France is", "Two plus two equals"):
        reply = httpx.post(f"{qwq_serve.url}/completions", headers=qwq_serve.auth, timeout=120,
                           json={"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 2})
        choice = reply.json()["choices"][0]
        texts.append(choice["text"])
        tokens.append("".join(choice["logprobs"]["tokens"]))
    assert texts[0] != texts[1] and tokens == texts
