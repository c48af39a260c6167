"""Output of `qwq history`: the conversation list, search hits and exports, through the Env."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Literal

from qwq_local.errors import UsageError
from qwq_local.render.history import Conversation, History, SearchHit
from qwq_local.render.console import DIM, Env, info, style, write

ExportFormat = Literal["markdown", "json"]


def conversation_line(conv: Conversation) -> str:
    """`  12  2026-11-23 04:46   3 turns  qwq-32b  What is 6*7?`."""
    when = conv.updated.replace("T", " ")[:16]
    return f"{conv.id:>4}  {when}  {conv.turns:>3} turns  {conv.model}  {conv.title}"


def hit_line(hit: SearchHit) -> str:
    """`  12.3  prompt…  — snippet with [match]`."""
    where = f"{hit.conversation_id}.{hit.idx}"
    prompt = " ".join(hit.prompt.split())
    prompt = prompt if len(prompt) <= 50 else prompt[:49] + "…"
    return f"{where:>8}  {prompt}  — {' '.join(hit.snippet.split())}"


def print_conversations(env: Env, history: History, limit: int | None = 20, as_json: bool = False) -> int:
    """List conversations, most recently active first; returns how many were listed."""
    conversations = history.conversations(limit=limit)
    if as_json:
        write(env.stdout, json.dumps([asdict(c) for c in conversations], ensure_ascii=False, indent=2) + "\n")
        return len(conversations)
    if not conversations:
        info(env, "no conversations yet; `qwq chat` starts one")
        return 0
    write(env.stdout, style(env, "  id  last activity (UTC)  turns  model  title", DIM) + "\n")
    write(env.stdout, "".join(conversation_line(c) + "\n" for c in conversations))
    return len(conversations)


def print_search(env: Env, history: History, text: str, limit: int = 20, as_json: bool = False) -> int:
    """Full-text search over prompts and answers; lines are `conversation.turn  prompt — snippet`."""
    if not text.strip():
        raise UsageError("search needs some words")
    try:  # an argument whose bytes are not UTF-8 arrives holding surrogates; SQLite's text cannot hold a NUL
        text.encode("utf-8")
    except UnicodeError:
        raise UsageError("the search text is not UTF-8") from None
    if "\0" in text:
        raise UsageError("the search text holds a NUL byte")
    hits = history.search(text, limit=limit)
    if as_json:
        write(env.stdout, json.dumps([asdict(h) for h in hits], ensure_ascii=False, indent=2) + "\n")
        return len(hits)
    if not hits:
        info(env, f"nothing in history matches {text!r}")
        return 0
    write(env.stdout, "".join(hit_line(h) + "\n" for h in hits))
    return len(hits)


def print_export(env: Env, history: History, conversation_id: int | None, fmt: ExportFormat = "markdown") -> None:
    """Write one conversation (the latest when id is None) as Markdown or JSON to stdout."""
    cid = conversation_id if conversation_id is not None else history.latest_id()
    if cid is None:
        raise UsageError("no conversations in history yet")
    if history.conversation(cid) is None:
        raise UsageError(f"no conversation {cid} in history; `qwq history` lists them")
    text = history.export_json(cid) if fmt == "json" else history.export_markdown(cid)
    write(env.stdout, text if text.endswith("\n") else text + "\n")
