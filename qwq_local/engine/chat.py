"""Chat generation on llama.cpp's high-level Llama: template, QwQ thinking, streaming, KV reuse."""

from __future__ import annotations

import codecs
import time
from typing import Callable, Iterator

import numpy as np

from qwq_local.config import Sampling
from qwq_local.dialog.messages import Message, TokenLogprob, TurnStats
from qwq_local.dialog.think import ThinkTally
from qwq_local.dialog.think import OPEN_LINE as THINK_OPEN
from qwq_local.dialog.think import strip_closed_thinking
from qwq_local.engine.model import LoadedModel
from qwq_local.engine.plan import RopePlan
from qwq_local.engine.policy import log_partition
from qwq_local.errors import ExitCode, QwqError

class LlamaChat:
    """A ChatModel over one loaded GGUF; keeps the KV cache across turns."""

    def __init__(self, model: LoadedModel, *, think: bool | None = None,
                 yarn_later: tuple[int, RopePlan] | None = None, on_note: Callable[[str], None] | None = None) -> None:
        """`yarn_later` (tokens, plan): a conversation past that many tokens reloads with YaRN, once, and says so."""
        self.model = model
        self.yarn_later = yarn_later
        self.on_note = on_note
        self.name = model.name
        self.n_ctx = model.n_ctx
        self.last_stats: TurnStats | None = None
        self.token_log: list[TokenLogprob] = []  # the last reply's tokens, when it was asked for log-probs
        opens_thinking = model.render_chat([Message("user", "x")]).endswith(THINK_OPEN)
        self.template_thinks = opens_thinking
        self.thinks = opens_thinking if think is None else think

    def prompt_text(self, messages: list[Message], think: bool | None = None) -> str:
        """The rendered prompt: history holds final answers only; a thinking reply opens `<think>\\n`.

        `think`: True opens the thinking even on a model that does not think on its own (None: `self.thinks`).
        """
        clean = [Message(m.role, strip_closed_thinking(m.content) if m.role == "assistant" else m.content)
                 for m in messages]
        text = self.model.render_chat(clean)
        if (self.thinks if think is None else think) and not text.endswith(THINK_OPEN):
            text += THINK_OPEN
        return text

    def reset(self) -> None:
        self.model.llama.reset()

    def stream(
        self,
        messages: list[Message],
        sampling: Sampling,
        *,
        intervene: Callable[[str, int], str | None] | None = None,
        think: bool | None = None,
    ) -> Iterator[str]:
        """Yield the reply's text pieces; a thinking reply starts with `<think>\\n` (`think` as in prompt_text)."""
        thinks = self.thinks if think is None else think
        self.token_log = []
        return self._generate(self.prompt_text(messages, thinks), thinks, sampling, intervene)

    def continue_text(self, text: str, sampling: Sampling, logprobs: int | None = None) -> Iterator[str]:
        """Yield the continuation of raw `text` (no chat template, no thinking): a plain text completion.

        `logprobs` (how many alternatives): each generated token goes to `token_log` before its text
        is yielded (a token that ends inside a character yields nothing; its entry comes with the next piece)."""
        self.token_log = log = []  # now, not at the generator's first step: a caller holds it from here
        return self._generate(text, False, sampling, None, logprobs, log if logprobs is not None else None)

    def _generate(self, prompt_text: str, thinks: bool, sampling: Sampling,
                  intervene: Callable[[str, int], str | None] | None, logprobs: int | None = None,
                  log: list[TokenLogprob] | None = None) -> Iterator[str]:
        start = time.perf_counter()
        prompt = self.model.tokenize(prompt_text)
        if self.yarn_later is not None and len(prompt) > self.yarn_later[0]:
            self._switch_to_yarn(*self.yarn_later)
        llama = self.model.llama
        if len(prompt) >= self.n_ctx:
            self.last_stats = TurnStats(len(prompt), 0, 0, 0, 0.0, 0.0, len(prompt), self.n_ctx, "context")
            raise ContextFullError(f"the conversation ({len(prompt):,} tokens) fills the context "
                                   f"({self.n_ctx:,}); use /reset or a larger --ctx")
        cached = _common_prefix(llama.input_ids[: llama.n_tokens].tolist(), prompt)
        evaluated = len(prompt) - min(cached, len(prompt) - 1)
        tally = ThinkTally(thinks, start)
        stop_reason = "length"
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        budget = min(sampling.max_tokens, self.n_ctx - len(prompt))
        if sampling.seed is not None:
            llama.set_seed(sampling.seed)
        tokens = list(prompt)

        def generate() -> Iterator[int]:
            return llama.generate(
                tokens, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
                temp=sampling.temperature, repeat_penalty=sampling.repeat_penalty,
                presence_penalty=sampling.presence_penalty, reset=True,
            )

        gen = generate()
        prefill = 0.0
        if tally.in_think:
            yield THINK_OPEN
        try:
            token = next(gen)
            prefill = time.perf_counter() - start
            while True:
                if self.model.is_eog(token):
                    stop_reason = "eos"
                    break
                tokens.append(token)
                piece = decoder.decode(self.model.token_bytes(token))
                if log is not None:
                    log.append(self._logprob(token, piece, logprobs or 0))
                tally.token(piece)
                if piece:
                    yield piece
                if tally.n_think + tally.n_answer >= budget:
                    break
                inject: list[int] | None = None
                if tally.in_think and intervene is not None:
                    extra = intervene(tally.thinking, tally.n_think)
                    if extra:
                        inject = self.model.tokenize(extra, bos=False)
                        tally.forced(extra, len(inject))
                        intervene(tally.thinking, tally.n_think)  # the count with the forced words
                        yield extra
                if inject:
                    # A fresh generate() over everything so far: its prefix reuse evaluates only
                    # the last sampled token and the injected ones (send() needs logits_all).
                    gen.close()
                    tokens.extend(inject)
                    gen = generate()
                token = next(gen)
        except (GeneratorExit, KeyboardInterrupt):  # the reader stopped, or Ctrl-C
            stop_reason = "interrupted"
            raise
        finally:
            gen.close()
            now = time.perf_counter()
            self.last_stats = TurnStats(
                prompt_tokens=len(prompt),
                evaluated_prompt_tokens=evaluated,
                thinking_tokens=tally.n_think,
                answer_tokens=tally.n_answer,
                seconds=now - start,
                thinking_seconds=tally.thinking_seconds(now, thinks),
                ctx_used=llama.n_tokens,
                n_ctx=self.n_ctx,
                stop_reason=stop_reason,
                prefill_seconds=prefill,
            )

    def _logprob(self, token: int, piece: str, top: int) -> TokenLogprob:
        """`token`'s log-prob under the logits it was sampled from (still the context's last row: generate()
        decodes the token only when asked for the next one)."""
        llama = self.model.llama
        logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(llama.n_vocab(),))
        norm = log_partition(logits)
        best: list[tuple[str, float]] = []
        if top > 0:
            ids = np.argpartition(logits, -top)[-top:]
            for i in sorted(ids, key=lambda i: -logits[i]):
                best.append((self.model.token_bytes(int(i)).decode("utf-8", errors="replace"),
                             float(logits[i]) - norm))
        return TokenLogprob(piece, float(logits[token]) - norm, tuple(best))

    def _switch_to_yarn(self, threshold: int, rope: RopePlan) -> None:
        self.yarn_later = None
        self.model.reopen(rope)
        if self.on_note is not None:
            self.on_note(f"YaRN on (x{rope.factor:g} over {rope.orig_ctx:,}): the conversation is past {threshold:,} "
                         "tokens, as the model card asks; its cache is rebuilt once")

    def complete(self, messages: list[Message], sampling: Sampling) -> str:
        """The whole reply as one string."""
        return "".join(self.stream(messages, sampling))


class ContextFullError(QwqError):
    """The prompt alone fills the context window."""

    exit_code = ExitCode.CONTEXT_TOO_LARGE


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
