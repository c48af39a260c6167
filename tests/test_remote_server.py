"""`qwq solve --engine URL` against a real OpenAI-compatible server: llama-cpp-python's own, on the tiny model.

That server ignores `n > 1`, so every expansion takes the concurrent-requests path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from qwq_local.cli import main
from qwq_local.errors import ExitCode
from tests.server_process import ServerProcess

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server needs the test extra (fastapi, ...)")
pytestmark = pytest.mark.slow

REPO = Path(__file__).parent.parent
NATALIA = REPO / "examples" / "natalia.md"


class LlamaServer(ServerProcess):
    """`python -m llama_cpp.server` on a free loopback port, its log lines read as they come."""

    def __init__(self, model: Path) -> None:
        super().__init__("llama_cpp.server", lambda port: [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "2048"], ready="/v1/models")

    def completions(self) -> int:
        return sum("POST /v1/completions" in line for line in list(self.lines))


@pytest.fixture(scope="module")
def llama_server(smollm_path: Path) -> Iterator[LlamaServer]:
    server = LlamaServer(smollm_path)
    try:
        yield server
    finally:
        server.stop()


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_sc_end_to_end(llama_server: LlamaServer, capsys: pytest.CaptureFixture[str]) -> None:
    before = llama_server.completions()
    code, out, err = run_cli(["solve", str(NATALIA), "-m", "smollm2-135m", "--engine", llama_server.url, "-s", "sc",
                              "-N", "2", "--max-tokens", "32", "--seed", "7", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["strategy"] == "sc" and len(report["terminal_answers"]) + (not report["complete"]) >= 1
    assert report["generated_tokens"] > 0 and report["tokens"]["prompt"] > 20
    assert llama_server.completions() - before >= 2  # n = 2 ignored: one request per reply at least


def test_astar_end_to_end_with_self_eval(llama_server: LlamaServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["solve", str(NATALIA), "-m", "smollm2-135m", "--engine", llama_server.url,
                              "-s", "astar", "-K", "2", "-N", "1", "--max-expansions", "2", "--max-tokens", "40",
                              "--seed", "3", "--scorer", "self-eval+rules", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["strategy"] == "astar" and report["scorer"] == "self-eval+rules"
    assert report["expansions"] >= 1 and report["nodes"] >= 3
    assert report["answer"] or report["thinking"]
    # The default A* scores by the replies' token confidence, which the server's log-probs give.
    code, out, err = run_cli(["solve", str(NATALIA), "-m", "smollm2-135m", "--engine", llama_server.url,
                              "-s", "astar", "-N", "2", "--max-tokens", "40", "--seed", "3", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["scorer"] == "confidence" and len(report["terminal_answers"]) >= 2


def test_greedy_matches_the_local_engine(llama_server: LlamaServer, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    problem = tmp_path / "sum.md"
    problem.write_text("What is 12 + 30? Answer with the number.")
    common = [str(problem), "-m", "smollm2-135m", "--temperature", "0", "--max-tokens", "40", "--format", "plain",
              "--json"]
    code, out, err = run_cli(["solve", *common], capsys)
    assert code == 0, err
    local = json.loads(out)
    code, out, err = run_cli(["solve", *common, "--engine", llama_server.url], capsys)
    assert code == 0, err
    remote = json.loads(out)
    assert remote["answer"] == local["answer"] and local["answer"]
    assert remote["tokens"]["prompt"] == local["tokens"]["prompt"]


def test_a_server_killed_mid_search_is_one_line_and_its_exit_code(smollm_path: Path, tmp_path: Path) -> None:
    server = LlamaServer(smollm_path)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwq_local", "solve", str(NATALIA), "-m", "smollm2-135m", "--engine", server.url,
         "-s", "astar", "-K", "2", "-N", "6", "--max-expansions", "200", "--max-tokens", "2000", "--scorer", "rules"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while server.completions() < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the search ended before the server was killed"
        server.stop()
        out, err = proc.communicate(timeout=120)
    finally:
        server.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.ENGINE_UNREACHABLE, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert server.url in err


def test_doctor_shows_what_the_engine_supports(llama_server: LlamaServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["doctor", "--engine", llama_server.url, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["models"] and report["models"][0].endswith(".gguf")
    assert report["n_gt_1"] is False and report["logprobs"] == 20 and report["kind"] == "llama_cpp.server"
    code, out, _ = run_cli(["doctor", "--engine", llama_server.url], capsys)
    assert "n > 1         no (K concurrent requests instead)" in out


def test_doctor_on_nothing_listening(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import functools

    from qwq_local.engine import remote_client

    waits: list[float] = []  # the back-off is counted, not slept
    monkeypatch.setattr(remote_client, "Retry", functools.partial(remote_client.Retry, sleep=waits.append))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run_cli(["doctor", "--engine", f"http://127.0.0.1:{port}"], capsys)
    assert code == ExitCode.ENGINE_UNREACHABLE and err.startswith("error: cannot reach") and err.count("\n") == 1
    assert waits and waits == sorted(waits)  # tried again, backing off, before it said so


def test_chat_streams_from_the_engine_and_searches_there(llama_server: LlamaServer, user_path: Path) -> None:
    env = dict(os.environ, QWQ_USER_PATH=str(user_path), NO_COLOR="1")
    before = llama_server.completions()
    chat = subprocess.run(
        [sys.executable, "-m", "qwq_local", "chat", "-m", "smollm2-135m", "--engine", llama_server.url,
         "--temperature", "0", "--max-tokens", "30", "--each-line"],
        input="What is the capital of France? One word.\n/search sc\nWhat is 2 + 2? Reply with the number.\n",
        env=env, text=True, capture_output=True, timeout=600)
    assert chat.returncode == 0, chat.stderr
    assert "Paris" in chat.stdout and "4" in chat.stdout.split("Paris", 1)[1]
    assert "sc:" in chat.stderr and "expansions" in chat.stderr
    assert llama_server.completions() - before >= 1 + 4  # the chat turn, then sc's four replies


def test_without_the_gguf_or_props_chat_runs_on_the_servers_own_template(llama_server: LlamaServer,
                                                                         user_path: Path, tmp_path: Path) -> None:
    env = dict(os.environ, QWQ_USER_PATH=str(user_path), NO_COLOR="1")
    chat = subprocess.run(  # smollm2-135m is not in this models dir, and llama_cpp.server has no /props
        [sys.executable, "-m", "qwq_local", "chat", "-m", "smollm2-135m", "--models-dir", str(tmp_path), "--engine",
         llama_server.url, "--temperature", "0", "--max-tokens", "30", "--each-line", "--think-budget", "500"],
        input="What is the capital of France? One word.\n/search sc\nWhat is 2 + 2? Reply with the number.\n",
        env=env, text=True, capture_output=True, timeout=600)
    assert chat.returncode == 0, chat.stderr
    assert "Paris" in chat.stdout and "4" in chat.stdout.split("Paris", 1)[1]  # both turns, the server's template
    assert "the server's (/v1/chat/completions)" in chat.stderr  # said once, as the chat starts
    assert "--think-budget is not applied" in chat.stderr  # the server writes the reply whole
    assert "search strategies are not available" in chat.stderr and "Traceback" not in chat.stderr  # one line
    assert any("/v1/chat/completions" in line for line in llama_server.lines)


def test_bench_engine_remote_recompute_ratio(llama_server: LlamaServer, smollm_path: Path) -> None:
    from qwq_local.bench.engine_bench import SearchShape
    from qwq_local.bench.remote_bench import run_remote_search
    from qwq_local.bench.run import format_remote
    from qwq_local.config import Sampling
    from qwq_local.engine.remote_client import CompletionServer
    from qwq_local.engine.vocab import GGUFVocab

    shape = SearchShape(prompt_tokens=60, depth=3, branching=3, step_tokens=12, expansions=4, seed=3)
    with CompletionServer(llama_server.url) as server, GGUFVocab(smollm_path) as vocab:
        row = run_remote_search(server, vocab, shape, Sampling(seed=1))
        prompt_tokens = row["distinct_tokens"] - row["generated_tokens"]
    assert row["requests"] == shape.expansions * shape.branching and row["n_gt_1"] is False
    assert 40 <= prompt_tokens <= 70 and row["generated_tokens"] > 0
    # every request re-sends its whole prefix: without a prefix cache the server evaluates it again each time
    assert row["sent_tokens"] >= shape.expansions * shape.branching * prompt_tokens
    assert row["recompute_ratio_without_cache"] > 2.0
    assert row["server_evaluated_tokens"] is None  # llama-cpp-python's server does not say what it evaluated
    row["url"] = llama_server.url
    assert "remote sent" in format_remote(row) and "reports no count" in format_remote(row)


def test_bench_accuracy_runs_every_strategy_on_the_engine(llama_server: LlamaServer, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "easy.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "question": q, "answer": a}) + "\n" for i, (q, a) in
                            enumerate([("What is 2 + 3?", "#### 5"), ("What is 10 - 4?", "#### 6")])))
    results = tmp_path / "runs.jsonl"
    args = ["bench", "accuracy", "--data", str(data), "--strategy", "direct,sc@2,astar:rules", "-m", "smollm2-135m",
            "--engine", llama_server.url, "--max-tokens", "24", "--candidates", "2", "--trajectories", "1",
            "--max-expansions", "2", "--results", str(results), "--json"]
    before = llama_server.completions()
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["problems"] == 2 and report["pending"] == 0
    scores = {s["strategy"]: s for s in report["scores"]}
    assert set(scores) == {"direct", "sc@2", "astar:rules"}
    assert all(s["errors"] == 0 and s["mean_tokens"] > 0 for s in scores.values()), [(s["strategy"], s["errors"], s["mean_tokens"]) for s in scores.values()]
    # direct streams one completion a problem; sc@2 two replies; A* at least one expansion of two candidates
    assert llama_server.completions() - before >= 2 * (1 + 2 + 2)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 6 and {r["setup"]["engine"] for r in records} == {llama_server.url}
    # the same engine resumes the runs without a request; the same model here (no --engine) does not mix with them
    before = llama_server.completions()
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert llama_server.completions() == before
    code, _, err = run_cli([a for a in args if a not in ("--engine", llama_server.url)], capsys)
    assert code == ExitCode.USAGE and "engine" in err


def test_without_the_gguf_a_server_that_says_no_template_is_one_line(llama_server: LlamaServer, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # smollm2-135m is a catalog model, but not in this models dir: its template is asked of the server, which
    # (llama_cpp.server, no /props) does not say it
    code, _, err = run_cli(["solve", str(NATALIA), "-m", "smollm2-135m", "--models-dir", str(tmp_path), "--engine",
                            llama_server.url, "-s", "sc", "-N", "2", "--max-tokens", "8"], capsys)
    assert code == ExitCode.NOT_PULLED_OFFLINE and err.count("\n") == 1
    assert "/props" in err and "qwq pull smollm2-135m" in err and llama_server.url in err
