"""Runs `qwq chat`: loads the model once, and gives the REPL a runner for search strategies."""

from __future__ import annotations

from typing import Any

from qwq_local import runtime
from qwq_local.config import Settings
from qwq_local.engine.chat import TurnStats


def run_chat_cmd(settings: Settings, *, show_thinking: bool, hide_thinking: bool, think_budget: int | None,
                 resume: int | None, resume_latest: bool) -> int:
    from qwq_local.engine.chat import LlamaChat
    from qwq_local.history import History
    from qwq_local.render.console import Env
    from qwq_local.render.repl import run_chat

    from qwq_local.errors import UsageError

    if show_thinking and hide_thinking:
        raise UsageError("--show-thinking and --hide-thinking cannot be used together")
    if think_budget is not None and think_budget < 1:
        raise UsageError("--think-budget must be at least 1 token")
    env = Env.from_process()
    history = History(settings.data_dir / "history.db")
    if resume_latest and resume is None:
        resume = history.latest_id()
    if resume is not None and history.conversation(resume) is None:
        raise UsageError(f"no conversation {resume} in the history; `qwq history` lists them")
    plan = runtime.plan_model(runtime.locate(settings.model, settings), settings)
    from qwq_local.solve_cmd import load_head

    head = load_head(plan, settings, required=settings.head is not None)  # once; a wrong --head is found now
    model = runtime.load(plan, settings)
    # A thinking budget makes even a model that does not think on its own open a <think> section.
    chat = LlamaChat(model, think=True if (plan.thinks or think_budget) else None)
    chat.name = settings.model
    try:
        return run_chat(chat, settings, env, history, show_thinking=show_thinking, hide_thinking=hide_thinking,
                        think_budget=think_budget, resume=resume,
                        strategy_runner=_strategy_runner(model, plan, settings, head))
    finally:
        model.close()


def _strategy_runner(model: Any, plan: runtime.ModelPlan, settings: Settings, head: Any):
    """`/search astar|beam|bon|sc`: answer the turn with search on the KV tree (chat cache untouched)."""

    def run(question: str, strategy: str, earlier: list) -> tuple[str, TurnStats, str]:
        from qwq_local.search.config import SearchConfig
        from qwq_local.search.strategies import needs_scorer
        from qwq_local.solve import solve_search
        from qwq_local.solve_cmd import default_scorers

        names = default_scorers(head) if needs_scorer(strategy) else []  # the summary says what scored
        config = SearchConfig(thinking=plan.thinks, max_reply_tokens=settings.sampling.max_tokens,
                              candidates=4, trajectories=4, beam=8, n_samples=4, beam_width=3,
                              max_expansions=24, time_limit=180.0, finish_partial=True)
        result = solve_search(model, question, "plain", settings.sampling, strategy, config, names,
                              thinks=plan.thinks, head=head if "qhead" in names else None, n_ctx=plan.n_ctx,
                              history=earlier,
                              kv_budget=runtime.kv_budget_tokens(plan, settings))
        search = result.search
        search.pop("_tree", None)
        text = (f"<think>\n{result.thinking}\n</think>\n\n" if result.thinking else "") + result.answer
        stats = TurnStats(result.prompt_tokens, search.get("evaluated_tokens", 0), result.thinking_tokens,
                          result.answer_tokens, result.seconds, 0.0, search.get("peak_kv_tokens", 0),
                          plan.n_ctx, "eos" if search.get("complete", True) else "length")
        summary = (f"{strategy}: {search.get('expansions', 0)} expansions · {search.get('nodes', 0)} nodes · "
                   f"{search.get('generated_tokens', 0)} generated · answers {search.get('terminal_answers')} · "
                   f"scorer {search.get('scorer') or '-'}")
        if not search.get("complete", True):
            summary += f" · stopped by its {search.get('stop_reason') or 'budget'} budget before a reply finished"
        if head is None and needs_scorer(strategy):
            summary += " (no Q-value head for this model)"
        return text, stats, summary

    return run
