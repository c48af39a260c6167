"""`qwq history`: list, search and export saved conversations."""

from __future__ import annotations

from typing import Any, Optional

import typer

from qwq_local.cli.root import history_app


def _history_env() -> tuple[Any, Any]:
    from qwq_local.config import user_data_dir
    from qwq_local.render.console import Env
    from qwq_local.render.history import History

    return Env.from_process(), History(user_data_dir() / "history.db")


@history_app.callback()
def history_list(ctx: typer.Context, limit: int = typer.Option(20, "--limit", "-n")) -> None:
    """List saved conversations (newest first)."""
    if ctx.invoked_subcommand is None:
        from qwq_local.render.history_view import print_conversations

        env, history = _history_env()
        print_conversations(env, history, limit=limit)


@history_app.command("search")
def history_search(text: str = typer.Argument(...)) -> None:
    """Full-text search over prompts and answers."""
    from qwq_local.render.history_view import print_search

    env, history = _history_env()
    print_search(env, history, text)


@history_app.command("show")
def history_show(conversation: Optional[int] = typer.Argument(None, help="ID (default: latest)."),
                 markdown: bool = typer.Option(True, "--markdown/--no-markdown", help="--no-markdown: JSON."),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Export one conversation as markdown or JSON."""
    from qwq_local.render.history_view import print_export

    env, history = _history_env()
    print_export(env, history, conversation, "json" if as_json or not markdown else "markdown")
