"""qwq's search against llama.cpp's own server, llama-server, on the tiny model.

It is the server users run, and it answers unlike llama-cpp-python's: log-probs in the chat form with token ids, a
stop string's tokens cut from them, `n` up to its slots, `/props` with the chat template and `/tokenize`. `.ci/run`
builds it (`.ci/build-llama-server`) and names it in QWQ_TEST_LLAMA_SERVER; elsewhere a `llama-server` on PATH serves.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from qwq_local.cli import main
from qwq_local.config import Sampling
from qwq_local.engine.remote import RemotePolicy
from qwq_local.engine.remote_client import CompletionServer
from qwq_local.search.protocol import Candidate, StepStop
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow

REPO = Path(__file__).parent.parent
NATALIA = REPO / "examples" / "natalia.md"
BINARY = os.environ.get("QWQ_TEST_LLAMA_SERVER") or shutil.which("llama-server")
STEP = StepStop(delimiter="\n\n", min_tokens=4, max_tokens=96)


def llama_server_argv(binary: str, model: Path) -> Callable[[int], list[str]]:
    """llama-server with two slots (so `n = 2` is honoured) and no web UI."""
    return lambda port: [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "4096", "-np", "2",
                         "-t", "2", "--no-webui"]


@pytest.fixture(scope="module")
def llama_server(smollm_path: Path) -> Iterator[ServerProcess]:
    if BINARY is None:
        pytest.skip("no llama-server: .ci/build-llama-server builds one (QWQ_TEST_LLAMA_SERVER names it)")
    server = ServerProcess("llama-server", llama_server_argv(BINARY, smollm_path), ready="/health")
    try:
        yield server
    finally:
        server.stop()


def _walk(policy: RemotePolicy, question: str, k: int) -> list[list[Candidate]]:
    """Each of `k` paths from the question, step by step to the end of its reply (at most 12 steps)."""
    paths = []
    root = policy.open(question)
    for first in policy.sample(root, k, STEP):
        steps, node = [first], first
        while not node.finished and len(steps) < 12:
            [node] = policy.sample(node.branch, 1, STEP)
            steps.append(node)
        paths.append(steps)
    return [steps for steps in paths if steps[-1].finished]


@pytest.mark.parametrize("vocabulary", ["gguf", "props"])
def test_steps_end_at_blank_lines_and_paths_go_on_to_the_end(llama_server: ServerProcess, smollm_path: Path,
                                                             vocabulary: str) -> None:
    from qwq_local.engine.server_format import ServerFormat
    from qwq_local.engine.vocab import GGUFVocab

    question = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " \
               "How many clips did Natalia sell altogether in April and May? Explain step by step."
    with CompletionServer(llama_server.url) as server:
        prompt_format = GGUFVocab(smollm_path) if vocabulary == "gguf" else ServerFormat.discover(server, None)
        assert prompt_format is not None  # llama-server's /props gives the template
        try:
            policy = RemotePolicy(server, prompt_format, Sampling(temperature=0.7, seed=5, max_tokens=300),
                                  thinks=False)
            paths = _walk(policy, question, 2)
        finally:
            prompt_format.close()
    assert policy.n_supported is True  # two slots: n = 2 in one request
    assert paths, "no path reached the end of its reply"
    for steps in paths:  # a step ends at its blank line, or at the step's token limit
        assert all(s.text.endswith("\n\n") or s.n_tokens >= STEP.max_tokens for s in steps[:-1]), steps
    # Before the stop string and EOS were told apart, every reply ended after its first step.
    assert max(len(steps) for steps in paths) >= 3, paths


def test_the_default_astar_finishes_several_multi_step_paths(llama_server: ServerProcess,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["solve", str(NATALIA), "-m", "smollm2-135m", "--engine", llama_server.url, "-s", "astar",
              "--max-tokens", "200", "--seed", "3", "--json"])
    out, err = capsys.readouterr()
    assert int(exc.value.code or 0) == 0, err
    report = json.loads(out)
    assert report["scorer"] == "confidence" and report["complete"]
    assert len(report["terminal_answers"]) >= 4  # the tree's paths (2 x 2 x 2) that reached an answer
    assert report["generated_tokens"] > 8 * 20  # whole replies, not a first step each
