"""`qwq chat`: the prompt_toolkit REPL on a terminal, or piped stdin sent as one message (or one per line)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.history import History as PromptHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from qwq_local.config import Settings
from qwq_local.errors import ExitCode, QwqError, UsageError
from qwq_local.render.history import History
from qwq_local.render.chatmodel import ChatModel, StrategyRunner
from qwq_local.render.commands import COMMANDS, is_command, run_command
from qwq_local.render.console import Env, ThinkingMode, error, info, warn
from qwq_local.render.session import STRATEGIES, ChatSession

PROMPT = ">>> "
CONTINUATION = "... "
PROMPT_HISTORY_FILE = "repl_history"


def run_chat(
    model: ChatModel,
    settings: Settings,
    env: Env,
    history: History | None,
    *,
    show_thinking: bool = False,
    hide_thinking: bool = False,
    think_budget: int | None = None,
    resume: int | None = None,
    strategy_runner: StrategyRunner | None = None,
    each_line: bool = False,
) -> int:
    """Chat until Ctrl-D, /exit or the end of piped input; return the exit code.

    On a terminal (env.stdin_isatty) this is a prompt_toolkit REPL; otherwise the whole of stdin is
    one message, after any slash commands on its first lines, as `ollama run` takes a piped file
    (`each_line`: every line is one message, slash commands too). Raises UsageError for conflicting
    flags or an unknown --resume id before anything is printed.
    """
    if show_thinking and hide_thinking:
        raise UsageError("--show-thinking and --hide-thinking cannot be used together")
    mode: ThinkingMode = "show" if show_thinking else "hide" if hide_thinking else "fold"
    session = ChatSession(
        model, settings, env, history, mode=mode, think_budget=think_budget, strategy_runner=strategy_runner
    )
    if resume is not None:
        session.resume(resume)
    if env.stdin_isatty:
        return _interactive(session)
    return _piped(session) if each_line else _piped_whole(session)


def _banner(session: ChatSession) -> None:
    env, model = session.env, session.model
    if session.conversation_id is not None:
        info(env, f"resumed conversation {session.conversation_id} · {len(session.turns)} turns")
    budget = f" · thinking budget {session.think_budget:,}" if session.think_budget else ""
    info(env, f"qwq chat · {model.name} · ctx {model.n_ctx:,}{budget} · /help for commands · Ctrl-D exits")


def _interactive(session: ChatSession) -> int:
    prompt = build_prompt_session(session.env)
    _banner(session)
    while True:
        try:
            text = prompt.prompt(PROMPT)
        except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the line, ask again
            continue
        except EOFError:  # Ctrl-D
            return ExitCode.OK
        if not text.strip():
            continue
        try:  # the terminal's bytes are decoded with surrogateescape: a byte that is not UTF-8 stays a surrogate
            text.encode("utf-8")
        except UnicodeError:
            error(session.env, "that line is not UTF-8 text (a stray byte from the terminal?): not sent")
            continue
        try:
            if is_command(text):
                if run_command(session, text):
                    return ExitCode.OK
            else:
                with _no_echo(session.env):
                    session.ask(text)
        except KeyboardInterrupt:  # between the reply and the prompt: nothing to undo
            continue
        except QwqError as exc:  # one failed turn (context full, ...) does not end the chat
            error(session.env, exc.message)


@contextlib.contextmanager
def _no_echo(env: Any) -> Iterator[None]:
    """Keys typed while a reply streams are not echoed into it (Ctrl-C still interrupts)."""
    try:
        import termios

        fd = env.stdin.fileno()
        old = termios.tcgetattr(fd)
    except (ImportError, AttributeError, OSError, ValueError):
        yield
        return
    new = list(old)
    new[3] &= ~termios.ECHO
    try:
        termios.tcsetattr(fd, termios.TCSANOW, new)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, old)


def _stdin_lines(stdin: Any) -> Iterator[str | None]:
    """Each line of stdin as text, or None for a line that is not UTF-8 (the others still count)."""
    binary = getattr(stdin, "buffer", None)
    for line in binary if binary is not None else stdin:
        try:
            text = line.decode("utf-8") if isinstance(line, bytes) else line
            text.encode("utf-8")  # text streams decoded with surrogateescape hold undecodable bytes as surrogates
        except UnicodeError:
            yield None
            continue
        yield text


def _piped_whole(session: ChatSession) -> int:
    """All of stdin as one message; slash commands on its first lines run before it."""
    env = session.env
    binary = getattr(env.stdin, "buffer", None)
    data = binary.read() if binary is not None else env.stdin.read()
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        text.encode("utf-8")
    except UnicodeError:
        error(env, "standard input is not UTF-8 text")
        return ExitCode.EMPTY_INPUT
    lines = text.splitlines(keepends=True)
    while lines and (is_command(lines[0].strip()) or not lines[0].strip()):
        command = lines.pop(0).strip()
        if command and run_command(session, command):
            return ExitCode.OK
    message = "".join(lines).strip()
    if not message:
        if not text.strip():
            error(env, "standard input is empty: pipe the message to send")
            return ExitCode.EMPTY_INPUT
        return ExitCode.OK  # commands alone (/help, /system ...)
    try:
        turn = session.ask(message)
    except QwqError as exc:
        error(env, exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return ExitCode.INTERRUPTED if turn.stop_reason == "interrupted" else ExitCode.OK


def _piped(session: ChatSession) -> int:
    """One message per line of stdin; the first failure's exit code is returned at EOF."""
    code = ExitCode.OK
    try:
        for number, line in enumerate(_stdin_lines(session.env.stdin), 1):
            if line is None:
                error(session.env, f"line {number} of standard input is not UTF-8 text: skipped")
                code = code or ExitCode.EMPTY_INPUT
                continue
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            if is_command(text):
                if run_command(session, text):
                    break
                continue
            try:
                turn = session.ask(text)
            except QwqError as exc:
                error(session.env, exc.message)
                code = code or exc.exit_code
                continue
            if turn.stop_reason == "interrupted":
                return ExitCode.INTERRUPTED
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return code


class SlashCompleter(Completer):
    """Completes command names after "/" and strategy names after "/search "."""

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/") or "\n" in text:
            return
        if " " not in text:
            for command in COMMANDS.values():
                if command.name.startswith(text):
                    yield Completion(command.name, -len(text), display_meta=command.help)
            return
        word, _, arg = text.partition(" ")
        if word == "/search" and " " not in arg:
            for name in STRATEGIES:
                if name.startswith(arg):
                    yield Completion(name, -len(arg))


def key_bindings() -> KeyBindings:
    """Enter sends (prompt_toolkit's default); Alt-Enter, sent as Esc then Enter, adds a line."""
    kb = KeyBindings()

    @kb.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return kb


class _KeptHistory(FileHistory):
    """FileHistory that goes on in memory when a line cannot be written (a full disk), with one warning."""

    def __init__(self, path: str, env: Env) -> None:
        super().__init__(path)
        self.env = env
        self.failed = False

    def store_string(self, string: str) -> None:
        if self.failed:
            return
        try:
            super().store_string(string)
        except (OSError, UnicodeError) as exc:
            self.failed = True
            warn(self.env, f"prompt history not kept from here on: {getattr(exc, 'strerror', None) or exc}")


def prompt_history(env: Env) -> PromptHistory:
    """Typed lines persist in the user data dir; an unwritable dir falls back to memory."""
    try:
        env.data_dir.mkdir(parents=True, exist_ok=True)
        path = env.data_dir / PROMPT_HISTORY_FILE
        path.touch(exist_ok=True)
        return _KeptHistory(str(path), env)
    except OSError as exc:
        warn(env, f"prompt history not kept: {exc}")
        return InMemoryHistory()


def build_prompt_session(env: Env) -> PromptSession[str]:
    """The prompt: single-line submit, multi-line editing, bracketed paste, slash completion."""
    return PromptSession(
        history=prompt_history(env),
        completer=SlashCompleter(),
        complete_while_typing=True,
        key_bindings=key_bindings(),
        multiline=False,
        prompt_continuation=lambda width, line_number, wrap_count: CONTINUATION.rjust(width),
        input=env.prompt_input,
        output=env.prompt_output,
    )
