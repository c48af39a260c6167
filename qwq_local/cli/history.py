"""`qwq history`: list, search, export and delete saved conversations."""

from __future__ import annotations

from typing import Any, Optional

import typer

from qwq_local.cli.root import Command, history_app


def _history_env() -> tuple[Any, Any]:
    from qwq_local.config import user_data_dir
    from qwq_local.render.console import Env
    from qwq_local.render.history import History

    return Env.from_process(), History(user_data_dir() / "history.db")


@history_app.callback()
def history_list(ctx: typer.Context, limit: int = typer.Option(20, "--limit", "-n", help="How many to list."),
                 as_json: bool = typer.Option(False, "--json", help="JSON: id, title, model, created, turns.")) -> None:
    """List saved conversations (newest first)."""
    if ctx.invoked_subcommand is None:
        from qwq_local.render.history_view import print_conversations

        env, history = _history_env()
        print_conversations(env, history, limit=limit, as_json=as_json)


@history_app.command("search", cls=Command)
def history_search(text: str = typer.Argument(...),
                   as_json: bool = typer.Option(False, "--json", help="JSON: conversation, turn, prompt, snippet.")
                   ) -> None:
    """Full-text search over prompts and answers."""
    from qwq_local.render.history_view import print_search

    env, history = _history_env()
    print_search(env, history, text, as_json=as_json)


@history_app.command("rm", cls=Command)
def history_rm(conversation: int = typer.Argument(..., help="ID (`qwq history` lists them)."),
               yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking.")) -> None:
    """Delete a conversation: every turn of it, thinking included."""
    from qwq_local.errors import UsageError

    env, history = _history_env()
    found = history.conversation(conversation)
    if found is None:
        raise UsageError(f"no conversation {conversation} in history; `qwq history` lists them")
    if not yes and not typer.confirm(f"Delete conversation {conversation} ({found.turns} turns, "
                                     f"{found.title!r})?", default=False, err=True):
        typer.echo("nothing deleted", err=True)
        return
    turns = history.delete(conversation)
    typer.echo(f"deleted conversation {conversation} ({turns} turns)")


@history_app.command("show", cls=Command)
def history_show(conversation: Optional[int] = typer.Argument(None, help="ID (default: latest)."),
                 markdown: bool = typer.Option(True, "--markdown/--no-markdown", help="--no-markdown: JSON."),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Export one conversation as markdown or JSON."""
    from qwq_local.render.history_view import print_export

    env, history = _history_env()
    print_export(env, history, conversation, "json" if as_json or not markdown else "markdown")
