"""ChatModels on a remote OpenAI-compatible engine (`qwq chat --engine`): RemoteChat streams from `/v1/completions`
with the chat template applied here; ServerChat, when the template is not known here, from `/v1/chat/completions`."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from qwq_local.config import Sampling
from qwq_local.dialog.messages import Message, TurnStats
from qwq_local.dialog.think import ThinkTally
from qwq_local.dialog.think import OPEN_LINE as THINK_OPEN
from qwq_local.dialog.think import strip_closed_thinking
from qwq_local.engine.remote import PromptFormat
from qwq_local.engine.remote_client import CompletionServer
from qwq_local.errors import EngineReplyError, ExitCode, QwqError


class RemoteChat:
    """A ChatModel whose replies a remote engine writes; the chat template is applied here, as for search."""

    def __init__(self, server: CompletionServer, prompt_format: PromptFormat, *, name: str, n_ctx: int,
                 model: str | None = None, think: bool | None = None) -> None:
        self.server = server
        self.format = prompt_format
        self.name = name
        self.n_ctx = n_ctx
        self.model = model
        self.last_stats: TurnStats | None = None
        self.template_thinks = prompt_format.render_chat([Message("user", "x")]).endswith(THINK_OPEN)
        self.thinks = self.template_thinks if think is None else think

    def prompt_text(self, messages: list[Any], think: bool | None = None) -> str:
        """The rendered prompt: history holds final answers only; a thinking reply opens `<think>\\n`.

        `think`: True opens the thinking even on a model that does not think on its own (None: `self.thinks`).
        """
        clean = [Message(m.role, strip_closed_thinking(m.content) if m.role == "assistant" else m.content)
                 for m in messages]
        text = self.format.render_chat(clean)
        if (self.thinks if think is None else think) and not text.endswith(THINK_OPEN):
            text += THINK_OPEN
        bos = self.format.added_bos
        return text[len(bos):] if bos and text.startswith(bos) else text

    def reset(self) -> None:
        """Nothing to forget here: the server keeps (or drops) its own prefix cache."""

    def stream(self, messages: list[Any], sampling: Sampling, *,
               intervene: Callable[[str, int], str | None] | None = None, think: bool | None = None,
               ) -> Iterator[str]:
        """Yield the reply's text pieces; a thinking reply starts with `<think>\\n`. Closing it ends the request.

        `think` as in `prompt_text` (a thinking budget opens the thinking, as the local engine does)."""
        start = time.perf_counter()
        prompt = self.prompt_text(messages, think)
        n_prompt = self.format.count_tokens(prompt)
        if n_prompt >= self.n_ctx:
            self.last_stats = TurnStats(n_prompt, 0, 0, 0, 0.0, 0.0, n_prompt, self.n_ctx, "context")
            raise QwqError(f"the conversation ({n_prompt:,} tokens) fills the context ({self.n_ctx:,}); use /reset "
                           "or a larger --ctx", ExitCode.CONTEXT_TOO_LARGE)
        tally = ThinkTally(self.thinks if think is None else think, start)
        generated = ""
        prefill = 0.0
        stop_reason = "length"
        budget = min(sampling.max_tokens, self.n_ctx - n_prompt)
        if tally.in_think:
            yield THINK_OPEN
        try:
            while tally.n_think + tally.n_answer < budget:
                body: dict[str, Any] = {
                    "prompt": prompt + generated, "max_tokens": budget - tally.n_think - tally.n_answer,
                    "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                    "min_p": sampling.min_p, "repeat_penalty": sampling.repeat_penalty,
                    "presence_penalty": sampling.presence_penalty, "cache_prompt": True,
                }
                if sampling.repeat_penalty != 1.0:  # vLLM's name for it (it ignores llama.cpp's)
                    body["repetition_penalty"] = sampling.repeat_penalty
                if sampling.seed is not None:
                    body["seed"] = sampling.seed
                if self.model:
                    body["model"] = self.model
                events = self.server.stream(body)
                forced = False
                try:
                    for event in events:
                        piece, finish = _piece(event, self.server.url)
                        if piece:
                            prefill = prefill or time.perf_counter() - start
                            generated += piece
                            tally.token(piece)
                            yield piece
                        if finish is not None:
                            stop_reason = "eos" if finish == "stop" else "length"
                            break
                        if tally.in_think and intervene is not None and piece:
                            extra = intervene(tally.thinking, tally.n_think)
                            if extra:  # forced words: this request ends, the next one reads them as prompt
                                tally.forced(extra, self.format.count_tokens(extra))
                                generated += extra
                                intervene(tally.thinking, tally.n_think)
                                yield extra
                                forced = True
                                break
                finally:
                    events.close()  # type: ignore[attr-defined]
                if not forced:
                    break
        except (GeneratorExit, KeyboardInterrupt):  # the reader stopped, or Ctrl-C
            stop_reason = "interrupted"
            raise
        finally:
            now = time.perf_counter()
            self.last_stats = TurnStats(
                prompt_tokens=n_prompt, evaluated_prompt_tokens=n_prompt, thinking_tokens=tally.n_think,
                answer_tokens=tally.n_answer, seconds=now - start,
                thinking_seconds=tally.thinking_seconds(now, self.thinks),
                ctx_used=n_prompt + tally.n_think + tally.n_answer, n_ctx=self.n_ctx, stop_reason=stop_reason,
                prefill_seconds=prefill,
            )

    def complete(self, messages: list[Message], sampling: Sampling) -> str:
        return "".join(self.stream(messages, sampling))


def _piece(event: Any, url: str) -> tuple[str, str | None]:
    """(text, finish_reason) of one streamed completion event."""
    try:
        if not event["choices"]:  # a closing event that carries only usage
            return "", None
        choice = event["choices"][0]
        text = choice.get("text") or ""
        if not isinstance(text, str):
            raise TypeError
        return text, choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise EngineReplyError(f"the engine at {url} streamed an event that is not a completion chunk") from None


class ServerChat:
    """A ChatModel for a server whose chat template is not known here (vLLM, Ollama, with the GGUF not pulled): the
    server applies its own template through `/v1/chat/completions`. Plain chat only; token counts from its `usage`."""

    def __init__(self, server: CompletionServer, *, name: str, n_ctx: int, model: str | None = None,
                 think: bool = False) -> None:
        self.server = server
        self.name = name
        self.n_ctx = n_ctx
        self.model = model
        self.thinks = think  # the server's template opens <think> itself (QwQ): its reply starts inside it
        self.last_stats: TurnStats | None = None

    def reset(self) -> None:
        """Nothing to forget here: the server keeps (or drops) its own prefix cache."""

    def stream(self, messages: list[Any], sampling: Sampling, *,
               intervene: Callable[[str, int], str | None] | None = None, think: bool | None = None,
               ) -> Iterator[str]:
        """Yield the reply's text pieces (a thinking reply starts with `<think>\\n`); closing it ends the request.
        The server writes the reply whole: a thinking budget (`intervene`) cannot be applied here."""
        start = time.perf_counter()
        clean = [{"role": m.role, "content": strip_closed_thinking(m.content) if m.role == "assistant" else m.content}
                 for m in messages]
        body: dict[str, Any] = {
            "messages": clean, "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "top_k": sampling.top_k, "min_p": sampling.min_p,
            "presence_penalty": sampling.presence_penalty, "stream_options": {"include_usage": True},
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if self.model:
            body["model"] = self.model
        thinks = self.thinks if think is None else think
        tally = ThinkTally(thinks, start)
        usage: dict[str, Any] = {}
        stop_reason, prefill, reasoning = "length", 0.0, False
        if tally.in_think:
            yield THINK_OPEN
        events = self.server.stream(body, "/v1/chat/completions")
        try:
            for event in events:
                if isinstance(event, dict) and isinstance(event.get("usage"), dict):
                    usage = event["usage"]
                piece, thought, finish = _delta(event, self.server.url)
                if thought:  # vLLM's reasoning parser: the thinking comes apart, opened here unless it already is
                    piece = (thought if tally.in_think or reasoning else THINK_OPEN + thought) + piece
                    reasoning = True
                elif reasoning and piece:  # the answer after separate reasoning: close the thinking shown
                    piece, reasoning = "\n</think>\n\n" + piece, False
                if piece:
                    prefill = prefill or time.perf_counter() - start
                    tally.token(piece)
                    yield piece
                if finish is not None:
                    stop_reason = "eos" if finish == "stop" else "length"
        except (GeneratorExit, KeyboardInterrupt):
            stop_reason = "interrupted"
            raise
        finally:
            events.close()  # type: ignore[attr-defined]
            now = time.perf_counter()
            n_prompt = int(usage.get("prompt_tokens") or 0)
            generated = int(usage.get("completion_tokens") or tally.n_think + tally.n_answer)
            self.last_stats = TurnStats(
                prompt_tokens=n_prompt, evaluated_prompt_tokens=n_prompt, thinking_tokens=tally.n_think,
                answer_tokens=max(generated - tally.n_think, 0), seconds=now - start,
                thinking_seconds=tally.thinking_seconds(now, thinks), ctx_used=n_prompt + generated,
                n_ctx=self.n_ctx, stop_reason=stop_reason, prefill_seconds=prefill,
            )

    def complete(self, messages: list[Message], sampling: Sampling) -> str:
        return "".join(self.stream(messages, sampling))


def _delta(event: Any, url: str) -> tuple[str, str, str | None]:
    """(content, reasoning content, finish_reason) of one streamed chat completion event."""
    try:
        if not event["choices"]:  # a closing event that carries only usage
            return "", "", None
        choice = event["choices"][0]
        delta = choice.get("delta") or {}
        # vLLM before 0.11 and llama-server send `reasoning_content`, vLLM since then `reasoning` (qwq serve: both)
        text, thought = delta.get("content") or "", delta.get("reasoning_content") or delta.get("reasoning") or ""
        if not isinstance(text, str) or not isinstance(thought, str):
            raise TypeError
        return text, thought, choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise EngineReplyError(f"the engine at {url} streamed an event that is not a chat completion chunk") from None
