"""`qwq chat` and `qwq solve` options on the real tiny model: --resume's model, --system, penalties, top-p/top-k."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from qwq_local.config import user_data_dir
from qwq_local.render.history import History, Turn
from tests.test_cli import NATALIA, run_cli

SHORT = ["--ctx", "512", "--max-tokens", "8", "--temperature", "0"]


def test_resume_continues_with_the_conversations_model(smollm_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the default model, qwq-32b, is never fetched
    with History(user_data_dir() / "history.db") as h:
        cid = h.add_turn(None, Turn(prompt="Hi", answer="Hello!", model=str(smollm_path))).conversation_id
    monkeypatch.setattr("sys.stdin", io.StringIO("Say yes.\n"))
    code, _, err = run_cli(["chat", "--resume", str(cid), *SHORT], capsys)
    assert code == 0, err
    with History(user_data_dir() / "history.db") as h:
        turns = h.turns(cid)
    assert [t.prompt for t in turns] == ["Hi", "Say yes."] and turns[1].model == str(smollm_path)


def test_penalties_and_system_prompt_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from qwq_local.config import load_settings
    from qwq_local.errors import UsageError

    settings = load_settings({"presence_penalty": 1.5, "system": "Be brief."})
    assert settings.sampling.presence_penalty == 1.5 and settings.sampling.repeat_penalty == 1.0
    assert settings.system == "Be brief." and load_settings().sampling.presence_penalty == 0.0  # off by default
    monkeypatch.setenv("QWQ_REPEAT_PENALTY", "1.1")
    assert load_settings().sampling.repeat_penalty == 1.1
    with pytest.raises(UsageError, match="presence-penalty"):
        load_settings({"presence_penalty": 2.5})


def test_presence_penalty_reaches_llama_cpp(smollm_path: Path) -> None:
    from dataclasses import replace

    from qwq_local.config import Sampling
    from qwq_local.dialog.messages import Message
    from qwq_local.engine.chat import LlamaChat
    from qwq_local.engine.model import LoadedModel, LoadOptions

    model = LoadedModel(smollm_path, LoadOptions(n_ctx=512))
    try:
        chat = LlamaChat(model)
        ask = [Message("user", "Write the word cat ten times, separated by spaces.")]
        greedy = Sampling(temperature=0, max_tokens=24)
        plain = chat.complete(ask, greedy)
        assert chat.complete(ask, greedy) == plain  # greedy is repeatable
        penalised = chat.complete(ask, replace(greedy, presence_penalty=2.0))
        repeated = chat.complete(ask, replace(greedy, repeat_penalty=1.5))
        assert penalised != plain and repeated != plain
        assert len(set(penalised.split())) > len(set(plain.split()))  # fewer repeats of the same words
    finally:
        model.close()


def test_system_prompt_reaches_the_model_in_solve(smollm_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["solve", str(NATALIA), "--model", str(smollm_path), *SHORT, "--json"]
    code, out, err = run_cli(base, capsys)
    assert code == 0, err
    without = json.loads(out)["tokens"]["prompt"]
    system = " ".join(["You are a careful grade-school maths tutor who checks each step twice."] * 6)
    code, out, err = run_cli([*base, "--system", system], capsys)
    assert code == 0, err
    with_system = json.loads(out)["tokens"]["prompt"]
    assert with_system > without + 40  # the system text is in the prompt (it replaces the template's default)


@pytest.mark.parametrize("strategy", ["direct", "astar"])
def test_solve_with_a_quantised_kv_cache_and_flash_attention(strategy: str, smollm_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    search = ["--candidates", "2", "--trajectories", "1", "--max-expansions", "2", "--scorer", "rules"]
    code, out, err = run_cli(["solve", str(NATALIA), "--model", str(smollm_path), "--ctx", "1024", "--max-tokens",
                              "16", "--temperature", "0", "--json", "--strategy", strategy,
                              *(search if strategy == "astar" else []),
                              "--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--flash-attn"], capsys)
    assert code == 0, err
    assert json.loads(out)["tokens"]["answer"] > 0


def yarn_past_64_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog in which the tiny qwen2 asks for YaRN x4 past 64 prompt tokens, as QwQ's card does past 8,192."""
    import re

    text = (Path(__file__).parent.parent / "models" / "catalog.toml").read_text()
    head, qwen = text.split('[models."qwen2.5-coder-0.5b"]', 1)
    qwen = re.sub(r"yarn_max_factor = 1\.0", "yarn_max_factor = 4.0\nyarn_from_tokens = 64", qwen, count=1)
    (tmp_path / "catalog.toml").write_text(head + '[models."qwen2.5-coder-0.5b"]' + qwen)
    monkeypatch.setenv("QWQ_CATALOG", str(tmp_path / "catalog.toml"))


def test_a_long_prompt_runs_with_yarn(qwen_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog model whose card asks for YaRN past N prompt tokens (QwQ: 8,192; here 64, on the tiny qwen2)."""
    import llama_cpp

    from qwq_local.app import runtime
    from qwq_local.config import load_settings
    from tests.conftest import MODELS_CACHE

    yarn_past_64_tokens(tmp_path, monkeypatch)
    long_problem = tmp_path / "long.md"
    long_problem.write_text("Natalia sold clips to 48 of her friends in April. " * 12 + "How many clips?")
    settings = load_settings({"models_dir": MODELS_CACHE, "ctx": 1024})
    plan = runtime.plan_model(runtime.locate("qwen2.5-coder-0.5b", settings), settings,
                              prompt=long_problem.read_text())
    assert plan.rope.yarn and plan.rope.factor == 4 and plan.note and "past the 64" in plan.note
    loaded = runtime.load(plan, settings)
    try:
        params = loaded.llama.context_params
        assert params.rope_scaling_type == llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN and params.rope_freq_scale == 0.25
    finally:
        loaded.close()
    short = runtime.plan_model(runtime.locate("qwen2.5-coder-0.5b", settings), settings, prompt="What is 2+2?")
    assert not short.rope.yarn and short.note is None
    code, _, err = run_cli(["solve", str(long_problem), "--model", "qwen2.5-coder-0.5b", "--models-dir",
                            str(MODELS_CACHE), "--ctx", "1024", "--max-tokens", "4", "--json"], capsys)
    assert code == 0, err
    assert err.count("note: YaRN on (x4 over 32,768)") == 1


def test_a_chat_that_grows_past_the_threshold_switches_to_yarn_once(tmp_path: Path, qwen_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import MODELS_CACHE

    yarn_past_64_tokens(tmp_path, monkeypatch)
    lines = ["Hi", "Natalia sold clips to 48 of her friends in April. " * 3, "Thanks", "Bye"]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code, out, err = run_cli(["chat", "--model", "qwen2.5-coder-0.5b", "--models-dir", str(MODELS_CACHE),
                              "--ctx", "1024", "--max-tokens", "6", "--temperature", "0", "--each-line"], capsys)
    assert code == 0, err
    assert err.count("note: YaRN on (x4 over 32,768): the conversation is past 64 tokens") == 1
    assert out.count("\n") >= 4  # every message answered, before and after the switch
