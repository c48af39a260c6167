"""The `qwq` command line: one module per command; errors become one line and an exit code."""

from __future__ import annotations

import errno
import os
import sys

import typer

# Each command module registers its commands on the app, in the order `qwq --help` lists them.
from qwq_local.cli import models, solve, chat, serve, head, bench, history  # noqa: F401,I001
from qwq_local.cli.root import app
from qwq_local.errors import ExitCode, QwqError


def _resume_with_id(args: list[str]) -> list[str]:
    """`qwq chat --resume 12` means --resume-id 12; a bare `--resume` continues the latest conversation."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg == "--resume" and out[i + 1].isdigit():
            out[i] = "--resume-id"
    return out


def _click_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage errors, exits, aborts) of click and of the copy of it that newer Typer versions vendor."""
    usage: list[type] = []
    exits: list[type] = [typer.Exit]
    aborts: list[type] = [typer.Abort]
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found = __import__(module, fromlist=["ClickException"])
        except ImportError:
            continue
        usage += [c for c in (getattr(found, "ClickException", None),) if c is not None]
        exits += [c for c in (getattr(found, "Exit", None),) if c is not None]
        aborts += [c for c in (getattr(found, "Abort", None),) if c is not None]
    return tuple(usage), tuple(exits), tuple(aborts)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; QwqError becomes `error: message` and its exit code (tracebacks with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("QWQ_DEBUG") == "1"
    if "--debug" in args:  # accepted anywhere on the line, as the error hint suggests
        args = ["--debug"] + [a for a in args if a != "--debug"]
    args = _resume_with_id(args)
    usage_errors, exits, aborts = _click_classes()
    try:
        code = app(args=args, prog_name="qwq", standalone_mode=False)
    except QwqError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(int(exc.exit_code))
    except exits as exc:
        code = getattr(exc, "exit_code", 0)
    except usage_errors as exc:
        if debug:
            raise
        exc.show()  # type: ignore[attr-defined]
        sys.exit(int(ExitCode.USAGE))
    except (KeyboardInterrupt, *aborts):
        if debug:
            raise
        typer.echo("interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:  # an unexpected failure: one line, and the way to see more
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {exc.filename}" if exc.filename else ""
            typer.echo(f"error: disk full{where} ({exc.strerror}); free space and run again: "
                       "what was finished is kept", err=True)
            sys.exit(int(ExitCode.DISK_FULL))
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(int(ExitCode.UNEXPECTED))
    code = code if isinstance(code, int) else 0
    if code == ExitCode.INTERRUPTED:  # Typer turns Ctrl-C into Exit(130); a chat returns it itself
        typer.echo("interrupted", err=True)
    sys.exit(code)


__all__ = ["app", "main"]
