"""One chat conversation: its turns, what the model is sent, how a reply is shown and saved.

Independent of prompt_toolkit, so the interactive REPL and piped stdin share it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from qwq_local.config import Settings
from qwq_local.errors import QwqError, UsageError
from qwq_local.render.history import History, Turn
from qwq_local.dialog.messages import Message, TurnStats
from qwq_local.render.chatmodel import ChatModel, StrategyRunner
from qwq_local.render.console import Env, ReplyView, ThinkingMode, info, tree_line, warn
from qwq_local.dialog.guard import Intervention
from qwq_local.dialog.think import Segment, ThinkParser, split_thinking

DIRECT = "direct"
STRATEGIES = (DIRECT, "astar", "beam", "bon", "sc")


@dataclass
class Totals:
    """Session totals for /stats."""

    turns: int = 0
    interrupted: int = 0
    thinking_tokens: int = 0
    answer_tokens: int = 0
    prompt_tokens: int = 0
    evaluated_prompt_tokens: int = 0
    seconds: float = 0.0

    def add(self, stats: TurnStats) -> None:
        self.turns += 1
        self.interrupted += stats.stop_reason == "interrupted"
        self.thinking_tokens += stats.thinking_tokens
        self.answer_tokens += stats.answer_tokens
        self.prompt_tokens += stats.prompt_tokens
        self.evaluated_prompt_tokens += stats.evaluated_prompt_tokens
        self.seconds += stats.seconds


class ChatSession:
    """The conversation state behind `qwq chat`."""

    def __init__(
        self,
        model: ChatModel,
        settings: Settings,
        env: Env,
        history: History | None,
        *,
        mode: ThinkingMode = "fold",
        think_budget: int | None = None,
        strategy_runner: StrategyRunner | None = None,
    ) -> None:
        if think_budget is not None and think_budget < 1:
            raise UsageError("--think-budget must be at least 1 token")
        self.model = model
        self.settings = settings
        self.env = env
        self.history = history
        self.mode: ThinkingMode = mode
        self.think_budget = think_budget
        self.strategy_runner = strategy_runner
        self.strategy = DIRECT
        self.system: str | None = settings.system  # --system, changed by /system
        self.turns: list[Turn] = []
        self.conversation_id: int | None = None
        self.last_stats: TurnStats | None = None
        self.totals = Totals()
        self._last_warning: str | None = None

    # --- conversation -------------------------------------------------------------------------

    def messages_for(self, prompt: str) -> list[Message]:
        """What the model is sent: earlier prompts and their final answers only, then `prompt`.

        A turn interrupted before it had any answer is left out (it stays in history and /think).
        """
        messages: list[Message] = [Message("system", self.system)] if self.system else []
        for turn in self.turns:
            if turn.answer.strip():
                messages += [Message("user", turn.prompt), Message("assistant", turn.answer)]
        messages.append(Message("user", prompt))
        return messages

    def resume(self, conversation_id: int) -> None:
        """Continue a stored conversation: its turns become the context."""
        if self.history is None:
            raise UsageError("--resume needs the history database")
        conv = self.history.conversation(conversation_id)
        if conv is None:
            raise UsageError(f"no conversation {conversation_id} in history; `qwq history` lists them")
        self.turns = self.history.turns(conversation_id)
        self.conversation_id = conversation_id

    def reset(self) -> None:
        """Start a new conversation and forget the model's KV cache."""
        if self._unsaved():  # the old conversation's turns go to it, or are said to be lost
            self._flush()
            if self._unsaved():
                warn(self.env, f"{len(self._unsaved())} turn(s) of that conversation could not be saved to history")
        self.turns, self.conversation_id, self.last_stats = [], None, None
        self.model.reset()

    def ask(self, prompt: str) -> Turn:
        """Run one turn (direct or with the session's search strategy), show it, save it."""
        if self.strategy != DIRECT and self.strategy_runner is not None:
            turn, stats = self._search_turn(prompt)
        else:
            turn, stats = self._direct_turn(prompt)
        self.last_stats = stats
        self.totals.add(stats)
        self._save(turn)
        return turn

    # --- a streamed reply ---------------------------------------------------------------------

    def _direct_turn(self, prompt: str) -> tuple[Turn, TurnStats]:
        clock = self.env.clock
        guard = Intervention(budget=self.think_budget)
        parser = ThinkParser(starts_in_thinking=self.model.thinks)
        view = ReplyView(self.env, self.mode)
        thinking: list[str] = []
        answer: list[str] = []
        start = clock()
        thinking_seconds: float | None = None
        before = self.model.last_stats
        interrupted = False

        def show(segments: list[Segment]) -> None:
            for seg in segments:
                if seg.kind == "thinking":
                    thinking.append(seg.text)
                    view.thinking(seg.text, guard.last_tokens or None)
                    continue
                fold()
                answer.append(seg.text)
                view.answer(seg.text)
            fold()

        def fold(ended: bool = False, interrupted: bool = False) -> None:
            """Fold at </think>, or when the reply ended (or was stopped) still inside its thinking."""
            nonlocal thinking_seconds
            if thinking_seconds is None and (parser.thinking_closed or ended):
                thinking_seconds = clock() - start
                tokens = guard.last_tokens or None
                final = self.model.last_stats
                if ended and final is not None and final is not before:  # the stream is over: exact count
                    tokens = final.thinking_tokens
                view.end_thinking(thinking_seconds, tokens, interrupted=interrupted, note=guard.note())

        stream: Iterator[str] | None = None
        try:
            stream = self.model.stream(self.messages_for(prompt), self.settings.sampling, intervene=guard)
            for piece in stream:
                show(parser.feed(piece))
            show(parser.close())
            fold(ended=True)  # e.g. the token limit hit inside the thinking
        except KeyboardInterrupt:
            interrupted = True
            _close_quietly(stream)
            show(parser.close())
            fold(ended=True, interrupted=True)
        except QwqError:  # the engine failed (context full, ...): tidy the screen, let the REPL say it
            _close_quietly(stream)
            view.abort()
            raise
        elapsed = clock() - start
        reported = self.model.last_stats
        if reported is None or reported is before:  # the engine did not report: count pieces ourselves
            stats = TurnStats(
                thinking_tokens=guard.last_tokens or len(thinking),
                answer_tokens=len(answer),
                seconds=elapsed,
                thinking_seconds=thinking_seconds or 0.0,
                n_ctx=self.model.n_ctx,
            )
        else:
            stats = TurnStats.of(reported)
        if interrupted:
            stats = replace(stats, stop_reason="interrupted")
        view.finish(stats, self.model.n_ctx)
        turn = self._turn(prompt, "".join(thinking), "".join(answer), DIRECT, stats)
        return turn, stats

    # --- a searched reply ---------------------------------------------------------------------

    def _search_turn(self, prompt: str) -> tuple[Turn, TurnStats]:
        assert self.strategy_runner is not None
        clock = self.env.clock
        view = ReplyView(self.env, self.mode)
        info(self.env, f"searching with {self.strategy}… (Ctrl-C stops)")
        start = clock()
        try:
            text, reported, tree = self.strategy_runner(prompt, self.strategy, self.messages_for(prompt)[:-1])
            stats = TurnStats.of(reported)
        except KeyboardInterrupt:
            stats = TurnStats(seconds=clock() - start, n_ctx=self.model.n_ctx, stop_reason="interrupted")
            text, tree = "", ""
        # the runner marks any thinking with explicit tags: untagged text is all answer
        thinking, answer = split_thinking(text, starts_in_thinking=False)
        if thinking.strip():
            view.thinking_done(thinking, stats.thinking_seconds, stats.thinking_tokens)
        if tree.strip():
            info(self.env, tree_line(self.strategy, tree))
        view.answer(answer)
        view.finish(stats, self.model.n_ctx)
        turn = self._turn(prompt, thinking, answer, self.strategy, stats)
        turn.tree_summary = tree
        return turn, stats

    # --- bookkeeping --------------------------------------------------------------------------

    def _turn(self, prompt: str, thinking: str, answer: str, strategy: str, stats: TurnStats) -> Turn:
        return Turn(
            prompt=prompt,
            thinking=thinking.strip(),
            answer=answer.strip(),
            model=self.model.name,
            strategy=strategy,
            prompt_tokens=stats.prompt_tokens,
            thinking_tokens=stats.thinking_tokens,
            answer_tokens=stats.answer_tokens,
            seconds=stats.seconds,
            stop_reason=stats.stop_reason,
            idx=len(self.turns) + 1,
        )

    def _save(self, turn: Turn) -> None:
        self.turns.append(turn)
        if self.history is not None:
            self._flush()

    def _unsaved(self) -> list[Turn]:
        """The turns the history could not take yet (a lock, a full disk): those without an id."""
        return [turn for turn in self.turns if turn.id is None] if self.history is not None else []

    def _flush(self) -> None:
        """Write the turns not yet in history, oldest first: a turn that could not be saved (a lock, a full disk)
        is written with the next one once the history takes writes again, so that no hole is left in it."""
        assert self.history is not None
        unsaved = self._unsaved()
        late = len(unsaved) - 1
        for turn in unsaved:
            result = self.history.add_turn(self.conversation_id, turn)
            if not result.ok:
                if result.warning != self._last_warning:  # say it once, not after every turn
                    warn(self.env, result.warning or "history not saved")
                    self._last_warning = result.warning
                return
            self.conversation_id = result.conversation_id
            turn.id, turn.conversation_id = result.turn_id, result.conversation_id
        if self._last_warning is not None and late > 0:
            info(self.env, f"history saved again, the {late} turn{'s' * (late > 1)} it missed included")
        self._last_warning = None


def _close_quietly(stream: object) -> None:
    """Close the reply generator; a second Ctrl-C while it stops is ignored."""
    close = getattr(stream, "close", None)
    if close is None:
        return
    try:
        close()
    except KeyboardInterrupt:
        pass
