"""The chat service: the model loaded once for `qwq chat`, and its `/search` turns on a KV tree."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

from qwq_local.app import runtime
from qwq_local.app.search import CHAT_SEARCH, SearchSetup, load_head, prepare_search, search_defaults
from qwq_local.app.solve import PolicyFactory, TreePolicies, solve_search
from qwq_local.config import Settings
from qwq_local.dialog.messages import TurnStats
from qwq_local.dialog.think import wrap_thinking
from qwq_local.search.strategies import needs_scorer


@dataclass(frozen=True)
class ChatSetup:
    """What `qwq chat` runs on, decided before the model loads: the model plan and the Q-value head."""

    plan: runtime.ModelPlan
    head: Any  # QHead | None


def prepare_chat(settings: Settings) -> ChatSetup:
    """Plan the model and load the head once (a wrong --head is found now, before the model loads)."""
    plan = runtime.plan_for(settings)
    if settings.engine is not None:  # no hidden states come back: searches score with self-eval and rules
        return ChatSetup(plan, None)
    return ChatSetup(plan, load_head(plan, settings, required=settings.head is not None))


@contextlib.contextmanager
def open_chat(setup: ChatSetup, settings: Settings, *, think: bool | None, yarn_later: Any = None,
              on_note: Any = None, think_budget: int | None = None) -> Iterator[tuple[Any, SearchTurns]]:
    """(the ChatModel, its `/search` turns) on the model loaded here, or on the remote engine `settings.engine`.

    `think=True` opens a <think> section even for a model that does not think on its own; `yarn_later`: the plan to
    reload with once the conversation passes the card's YaRN threshold (`on_note` says so). `think_budget`: only to
    say that a server writing the reply whole cannot apply it.
    """
    if settings.engine is not None:
        from qwq_local.app.remote import remote_policies
        from qwq_local.engine.remote_chat import RemoteChat, ServerChat

        with remote_policies(setup.plan, settings) as policies:
            if policies.prompt_format is None:  # the server's own template, through /v1/chat/completions
                chat: Any = ServerChat(policies.server, name=settings.model, n_ctx=setup.plan.n_ctx,
                                       model=policies.served_model, think=bool(setup.plan.thinks))
                if on_note is not None:
                    on_note("the chat template is the server's (/v1/chat/completions); /search needs it here: "
                            "`qwq pull` the model's GGUF" + ("; --think-budget is not applied: the server writes "
                                                            "the reply whole" if think_budget is not None else ""))
            else:
                chat = RemoteChat(policies.server, policies.prompt_format, name=settings.model,
                                  n_ctx=setup.plan.n_ctx, model=policies.served_model, think=think)
            yield chat, SearchTurns(policies, setup, settings)
        return
    from qwq_local.engine.chat import LlamaChat

    loaded = runtime.load(setup.plan, settings)
    try:
        engine = LlamaChat(loaded, think=think, yarn_later=yarn_later, on_note=on_note)
        engine.name = settings.model
        yield engine, SearchTurns(TreePolicies(loaded), setup, settings)
    finally:
        loaded.close()


class SearchTurns:
    """`/search astar|beam|bon|sc`: a chat turn answered by search on fresh policies (the chat's cache untouched)."""

    def __init__(self, policies: PolicyFactory, setup: ChatSetup, settings: Settings) -> None:
        self.policies = policies
        self.setup = setup
        self.settings = settings

    @property
    def unavailable(self) -> str | None:
        """Why searches cannot run in this chat (a remote model's template not known here), else None."""
        return getattr(self.policies, "needs", None)

    def search_setup(self, strategy: str) -> SearchSetup:
        return prepare_search(self.setup.plan, self.settings, strategy, search_defaults(strategy, CHAT_SEARCH),
                              head=self.setup.head)

    def __call__(self, question: str, strategy: str, earlier: list) -> tuple[str, TurnStats, str]:
        """(reply text, its stats, a one-line summary of the search) for `question` after `earlier` turns."""
        setup = self.search_setup(strategy)
        plan = self.setup.plan
        result = solve_search(setup, question, "plain", self.settings.sampling, self.policies, history=earlier)
        search = result.search
        assert search is not None
        text = wrap_thinking(result.thinking, result.answer)
        stats = TurnStats(result.prompt_tokens, search.evaluated_tokens, result.thinking_tokens,
                          result.answer_tokens, result.seconds, 0.0, search.peak_kv_tokens,
                          plan.n_ctx, "eos" if search.complete else "length")
        summary = (f"{strategy}: {search.expansions} expansions · {search.nodes} nodes · "
                   f"{search.generated_tokens} generated · answers {search.terminal_answers} · "
                   f"scorer {search.scorer or '-'}")
        if not search.complete:
            summary += f" · stopped by its {search.stop_reason or 'budget'} budget before a reply finished"
        if self.setup.head is None and needs_scorer(strategy):
            summary += " (no Q-value head for this model)"
        return text, stats, summary
