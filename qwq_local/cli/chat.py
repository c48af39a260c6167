"""`qwq chat`: the REPL on a model loaded once, with `/search` turns answered by the search service."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from qwq_local.cli.root import (
    ApiKeyOpt,
    ChatTemplateOpt,
    YesOpt,
    confirm_download,
    Command,
    EngineOpt,
    CtxOpt,
    GpuOpt,
    HeadOpt,
    MaxTokensOpt,
    ModelOpt,
    CacheKOpt,
    CacheVOpt,
    FlashOpt,
    ModelsDirOpt,
    PresenceOpt,
    RepeatOpt,
    SeedOpt,
    SystemOpt,
    TemperatureOpt,
    ThinkBudgetOpt,
    TopKOpt,
    TopPOpt,
    app,
    settings_from,
)
from qwq_local.errors import UsageError


@app.command(cls=Command)
def chat(
    model: Optional[str] = ModelOpt,
    show_thinking: bool = typer.Option(False, "--show-thinking", help="Keep thinking open."),
    hide_thinking: bool = typer.Option(False, "--hide-thinking", help="Only a spinner while thinking."),
    think_budget: Optional[int] = ThinkBudgetOpt,
    resume: Optional[int] = typer.Option(None, "--resume-id", hidden=True),
    resume_latest: bool = typer.Option(False, "--resume", help="Continue the latest conversation; --resume ID that one."),
    each_line: bool = typer.Option(False, "--each-line", help="Piped stdin: one message a line (default: the whole "
                                   "input is one message, after slash commands on its first lines)."),
    temperature: Optional[float] = TemperatureOpt,
    seed: Optional[int] = SeedOpt,
    max_tokens: Optional[int] = MaxTokensOpt,
    top_p: Optional[float] = TopPOpt,
    top_k: Optional[int] = TopKOpt,
    presence_penalty: Optional[float] = PresenceOpt,
    repeat_penalty: Optional[float] = RepeatOpt,
    system: Optional[str] = SystemOpt,
    ctx: Optional[int] = CtxOpt,
    cache_type_k: Optional[str] = CacheKOpt,
    cache_type_v: Optional[str] = CacheVOpt,
    flash_attn: Optional[bool] = FlashOpt,
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
    head: Optional[Path] = HeadOpt,
    engine: Optional[str] = EngineOpt,
    api_key: Optional[str] = ApiKeyOpt,
    chat_template: Optional[str] = ChatTemplateOpt,
    yes: bool = YesOpt,
) -> None:
    """Interactive chat with folded thinking (piped stdin: the whole input is one message, as `ollama run`)."""
    from qwq_local.app import runtime
    from qwq_local.app.chat import open_chat, prepare_chat
    from qwq_local.render.console import Env, info
    from qwq_local.render.history import open_history
    from qwq_local.render.repl import run_chat

    settings = settings_from(model=model, temperature=temperature, seed=seed, max_tokens=max_tokens, ctx=ctx,
                             gpu_layers=gpu_layers, models_dir=models_dir, head=head, engine=engine,
                             api_key=api_key, top_p=top_p, top_k=top_k, presence_penalty=presence_penalty,
                             repeat_penalty=repeat_penalty, system=system, cache_type_k=cache_type_k,
                             cache_type_v=cache_type_v, flash_attn=flash_attn, chat_template=chat_template)
    if show_thinking and hide_thinking:
        raise UsageError("--show-thinking and --hide-thinking cannot be used together")
    if think_budget is not None and think_budget < 1:
        raise UsageError("--think-budget must be at least 1 token")
    env = Env.from_process()
    history, warning = open_history(settings.data_dir / "history.db")
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    if history is None and (resume_latest or resume is not None):
        raise UsageError("--resume needs the history database, which cannot be used now")
    if history is not None and resume_latest and resume is None:
        resume = history.latest_id()
    resumed = history.conversation(resume) if history is not None and resume is not None else None
    if history is not None and resume is not None and resumed is None:
        raise UsageError(f"no conversation {resume} in the history; `qwq history` lists them")
    if resumed is not None and resumed.model and model is None:  # the model it was held with, unless -m says
        settings = replace(settings, model=resumed.model)
    confirm_download(settings, yes)
    setup = prepare_chat(settings)
    settings = runtime.sized_to(setup.plan, settings)
    # A thinking budget makes even a model that does not think on its own open a <think> section.
    with open_chat(setup, settings, think=True if (setup.plan.thinks or think_budget) else None,
                   yarn_later=runtime.yarn_later(setup.plan),
                   on_note=lambda text: info(env, f"note: {text}"), think_budget=think_budget) as (chat_model, turns):
        code = run_chat(chat_model, settings, env, history, show_thinking=show_thinking, hide_thinking=hide_thinking,
                        think_budget=think_budget, resume=resume, strategy_runner=None if turns.unavailable else turns,
                        each_line=each_line)
    if code:
        raise typer.Exit(code)
