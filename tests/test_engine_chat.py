"""The chat engine on the real tiny model: KV reuse across turns, thinking, YaRN, interventions."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwq_local.config import Sampling
from qwq_local.dialog.messages import Message
from qwq_local.dialog.think import strip_closed_thinking as strip_thinking
from qwq_local.engine.chat import LlamaChat
from qwq_local.engine.model import LoadedModel, LoadOptions
from qwq_local.engine.plan import plan_rope

pytestmark = pytest.mark.model
GREEDY = Sampling(temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def chat(qwen_path: Path) -> LlamaChat:
    model = LoadedModel(qwen_path, LoadOptions(n_ctx=2048))
    yield LlamaChat(model)
    model.close()


def test_second_turn_evaluates_only_new_tokens(chat: LlamaChat) -> None:
    chat.reset()
    history = [Message("user", "Name a prime number.")]
    first = chat.complete(history, GREEDY)
    assert chat.last_stats.evaluated_prompt_tokens == chat.last_stats.prompt_tokens
    history += [Message("assistant", first), Message("user", "And another one?")]
    chat.complete(history, GREEDY)
    stats = chat.last_stats
    new_tail = len(chat.model.tokenize("<|im_end|>\n<|im_start|>user\nAnd another one?<|im_end|>\n"
                                       "<|im_start|>assistant\n", bos=False))
    assert stats.evaluated_prompt_tokens <= new_tail + 2
    assert stats.evaluated_prompt_tokens < stats.prompt_tokens / 3


def test_history_sent_back_holds_no_thinking(chat: LlamaChat) -> None:
    msgs = [Message("user", "q"), Message("assistant", "<think>\nsecret plan\n</think>\n\nAnswer 4"),
            Message("user", "next")]
    text = chat.prompt_text(msgs)
    assert "secret plan" not in text and "Answer 4" in text
    assert strip_thinking("a</think>\n\nb") == "b" and strip_thinking("no tags") == "no tags"


def test_forced_thinking_and_budget_intervention(qwen_path: Path) -> None:
    model = LoadedModel(qwen_path, LoadOptions(n_ctx=1024))
    try:
        chat = LlamaChat(model, think=True)
        assert chat.prompt_text([Message("user", "hi")]).endswith("<|im_start|>assistant\n<think>\n")
        closing = "\n\nTime is up; the answer follows.\n</think>\n\n"
        calls = []

        def intervene(thinking: str, n: int) -> str | None:
            calls.append(n)
            return closing if n >= 5 else None

        text = "".join(chat.stream([Message("user", "What is 2+3?")], Sampling(temperature=0, max_tokens=40),
                                   intervene=intervene))
        assert text.startswith("<think>\n") and closing in text
        stats = chat.last_stats
        assert stats.thinking_tokens >= 5 and stats.answer_tokens > 0
        forced = len(model.tokenize(closing, bos=False))
        assert calls[-2:] == [5, 5 + forced]  # fired at 5, then told the count with the forced words
        assert stats.thinking_tokens == 5 + forced
    finally:
        model.close()


def test_yarn_context_is_applied_and_runs(qwen_path: Path) -> None:
    rope = plan_rope(40_960, 32_768, 4)
    model = LoadedModel(qwen_path, LoadOptions(n_ctx=40_960, rope=rope))
    try:
        params = model.context_params()
        assert params["n_ctx"] == 40_960
        assert params["rope_scaling_type"] == 2  # LLAMA_ROPE_SCALING_TYPE_YARN
        assert params["rope_freq_scale"] == pytest.approx(0.5)
        assert params["yarn_orig_ctx"] == 32_768
        out = LlamaChat(model).complete([Message("user", "Say hello.")], Sampling(temperature=0, max_tokens=8))
        assert out.strip()
    finally:
        model.close()


def test_native_context_never_uses_yarn(qwen_path: Path) -> None:
    model = LoadedModel(qwen_path, LoadOptions(n_ctx=4096, rope=plan_rope(4096, 32_768)))
    try:
        assert model.context_params()["rope_scaling_type"] != 2
    finally:
        model.close()
