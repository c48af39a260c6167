"""Slash commands of `qwq chat`: each one reads or changes the session and prints one answer."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qwq_local.render.history import Turn, title_of, transcript_markdown
from qwq_local.render.console import DIM, error, info, style, write
from qwq_local.render.session import DIRECT, STRATEGIES, ChatSession


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    help: str
    run: Callable[[ChatSession, str], bool]  # (session, argument) -> exit the REPL?


def is_command(line: str) -> bool:
    """A known command, or a one-line "/word" typo; "/usr/bin is what?" is a question."""
    text = line.strip()
    if not text.startswith("/"):
        return False
    word = text.split(maxsplit=1)[0]
    return word in COMMANDS or ("/" not in word[1:] and "\n" not in text)


def run_command(session: ChatSession, line: str) -> bool:
    """Run one slash command; True means the REPL should end."""
    word, _, arg = line.strip().partition(" ")
    command = COMMANDS.get(word)
    if command is None:
        error(session.env, f"unknown command {word}; /help lists them")
        return False
    return command.run(session, arg.strip())


def _help(s: ChatSession, arg: str) -> bool:
    width = max(len(c.usage) for c in COMMANDS.values())
    lines = [f"  {c.usage:<{width}}  {c.help}" for c in COMMANDS.values()]
    lines += [
        "",
        (
            "  Enter sends · Alt-Enter (or Esc, Enter) adds a line · Ctrl-C stops a reply or clears"
            " the line · Ctrl-D exits"
        ),
    ]
    write(s.env.chrome, "\n".join(lines) + "\n")
    return False


def _turn_arg(s: ChatSession, arg: str, what: str) -> Turn | None:
    if not s.turns:
        error(s.env, "no turns yet")
        return None
    if not arg:
        return s.turns[-1]
    try:
        n = int(arg)
    except ValueError:
        error(s.env, f"usage: /{what} [N]  (N is a turn number, 1..{len(s.turns)})")
        return None
    if not 1 <= n <= len(s.turns):
        error(s.env, f"no turn {n}; this conversation has turns 1..{len(s.turns)}")
        return None
    return s.turns[n - 1]


def _think(s: ChatSession, arg: str) -> bool:
    turn = _turn_arg(s, arg, "think")
    if turn is None:
        return False
    n = s.turns.index(turn) + 1
    if not turn.thinking.strip():
        info(s.env, f"turn {n} has no thinking")
        return False
    tokens = f" · {turn.thinking_tokens:,} tokens" if turn.thinking_tokens else ""
    write(s.env.chrome, style(s.env, f"▾ Thinking of turn {n}{tokens}", DIM) + "\n")
    write(s.env.chrome, turn.thinking.strip() + "\n")
    return False


def _tree(s: ChatSession, arg: str) -> bool:
    turn = _turn_arg(s, arg, "tree")
    if turn is None:
        return False
    if not turn.tree_summary.strip():
        info(s.env, "that turn has no search tree (search trees are kept for this session only)")
        return False
    write(s.env.chrome, turn.tree_summary.strip() + "\n")
    return False


def _search(s: ChatSession, arg: str) -> bool:
    if not arg:
        info(s.env, f"strategy: {s.strategy}  (choose from {', '.join(STRATEGIES)})")
        return False
    if arg not in STRATEGIES:
        error(s.env, f"unknown strategy {arg!r}; choose from {', '.join(STRATEGIES)}")
        return False
    if arg != DIRECT and s.strategy_runner is None:
        error(s.env, "search strategies are not available in this session")
        return False
    s.strategy = arg
    info(s.env, f"strategy for the next turns: {arg}")
    return False


def _budget(s: ChatSession, arg: str) -> bool:
    if not arg:
        current = f"{s.think_budget:,} tokens" if s.think_budget else "off"
        info(s.env, f"thinking budget: {current}  (/budget N, or /budget off)")
        return False
    if arg.lower() in ("off", "none", "0"):
        s.think_budget = None
        info(s.env, "thinking budget: off")
        return False
    try:
        budget = int(arg.replace(",", "").replace("_", ""))
    except ValueError:
        budget = 0
    if budget < 1:
        error(s.env, "usage: /budget N  (N thinking tokens, at least 1) or /budget off")
        return False
    s.think_budget = budget
    info(s.env, f"thinking budget: {budget:,} tokens")
    return False


def _system(s: ChatSession, arg: str) -> bool:
    if not arg:
        info(s.env, f"system prompt: {s.system!r}" if s.system else "system prompt: none  (/system TEXT, /system off)")
        return False
    s.system = None if arg.lower() in ("off", "none") else arg
    info(s.env, "system prompt: off" if s.system is None else "system prompt set for the next turns")
    return False


def _ctx(s: ChatSession, arg: str) -> bool:
    stats = s.last_stats
    if stats is None or not stats.ctx_used:
        info(s.env, f"context: not measured yet · size {s.model.n_ctx:,} tokens")
        return False
    size = stats.n_ctx or s.model.n_ctx
    info(s.env, f"context: {stats.ctx_used:,} / {size:,} tokens ({100 * stats.ctx_used / size:.0f}%)")
    return False


def _model(s: ChatSession, arg: str) -> bool:
    p = s.settings.sampling
    thinks = "thinks" if s.model.thinks else "does not think on its own"
    info(
        s.env,
        f"{s.model.name} · ctx {s.model.n_ctx:,} · {thinks} · temperature {p.temperature:g} · top_p {p.top_p:g}"
        f" · top_k {p.top_k} · min_p {p.min_p:g} · max_tokens {p.max_tokens:,}"
        f" · presence_penalty {p.presence_penalty:g} · repeat_penalty {p.repeat_penalty:g}",
    )
    return False


def _reset(s: ChatSession, arg: str) -> bool:
    s.reset()
    info(s.env, "new conversation")
    return False


def _save(s: ChatSession, arg: str) -> bool:
    if not arg:
        error(s.env, "usage: /save PATH")
        return False
    path = Path(arg)
    title = title_of(s.turns[0].prompt) if s.turns else ""
    try:
        path = path.expanduser()  # RuntimeError: ~user that does not exist
        write_atomically(path, transcript_markdown(title, s.model.name, s.turns))
    except OSError as exc:
        error(s.env, f"cannot save to {path}: {exc.strerror or exc}")
        return False
    except (ValueError, RuntimeError) as exc:  # a NUL byte in the path, an unknown ~user
        error(s.env, f"cannot save to {arg!r}: {exc}")
        return False
    info(s.env, f"saved {len(s.turns)} turns to {path}")
    return False


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`."""
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory", str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stats(s: ChatSession, arg: str) -> bool:
    t = s.totals
    generated = t.thinking_tokens + t.answer_tokens
    rate = f" · {generated / t.seconds:.1f} tok/s" if t.seconds else ""
    line = (
        f"{t.turns} turns · thinking {t.thinking_tokens:,} tok · answer {t.answer_tokens:,} tok"
        f" · {t.seconds:.1f} s{rate}"
    )
    if t.prompt_tokens:
        reused = 100 * (1 - t.evaluated_prompt_tokens / t.prompt_tokens)
        line += f" · prompt {t.prompt_tokens:,} tok ({t.evaluated_prompt_tokens:,} evaluated, {reused:.0f}% cached)"
    if t.interrupted:
        line += f" · {t.interrupted} interrupted"
    info(s.env, line)
    return False


def _exit(s: ChatSession, arg: str) -> bool:
    return True


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command("/help", "/help", "this list", _help),
        Command("/think", "/think [N]", "show the last turn's thinking (or turn N's) in full", _think),
        Command("/tree", "/tree [N]", "show the last search tree summary (or turn N's)", _tree),
        Command("/search", "/search STRATEGY", f"strategy for the next turns: {'|'.join(STRATEGIES)}", _search),
        Command("/budget", "/budget N|off", "thinking budget in tokens", _budget),
        Command("/system", "/system TEXT|off", "the system prompt for the next turns", _system),
        Command("/ctx", "/ctx", "context used and its size", _ctx),
        Command("/model", "/model", "the model and its sampling settings", _model),
        Command("/reset", "/reset", "start a new conversation", _reset),
        Command("/save", "/save PATH", "write this conversation as Markdown", _save),
        Command("/stats", "/stats", "session totals", _stats),
        Command("/exit", "/exit", "leave (or Ctrl-D)", _exit),
        Command("/quit", "/quit", "leave", _exit),
    ]
}
