"""The `qwq` command line: parse, build settings, call; errors become one line and an exit code."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from qwq_local import __version__
from qwq_local.errors import ExitCode, QwqError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Local reasoning assistant: QwQ-32B on llama.cpp with step-level A* search.")
head_app = typer.Typer(no_args_is_help=True, help="Q-value heads.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: engine speed, accuracy.")
history_app = typer.Typer(invoke_without_command=True, help="Saved conversations.")
app.add_typer(head_app, name="head")
app.add_typer(bench_app, name="bench")
app.add_typer(history_app, name="history")

ModelOpt = typer.Option(None, "--model", "-m", help="Catalog name, .gguf path or hf:REPO/FILE.")
ModelsDirOpt = typer.Option(None, "--models-dir", help="Where weights live (QWQ_MODELS_DIR).")
CtxOpt = typer.Option(None, "--ctx", help="Context size in tokens (YaRN beyond the native length).")
GpuOpt = typer.Option(None, "--gpu-layers", help="auto | all | N layers on the GPU.")
HeadOpt = typer.Option(None, "--head", help="Q-value head .gguf instead of the catalog's (QWQ_HEAD).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qwq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """qwq: a local reasoning assistant."""


def settings_from(**flags: Any):
    from qwq_local.config import load_settings

    return load_settings(flags)


# ------------------------------------------------------------------------------------------ models
@app.command()
def pull(model: str = typer.Argument(..., help="Catalog name, hf:REPO/FILE."),
         models_dir: Optional[Path] = ModelsDirOpt) -> None:
    """Download a model (and its Q-value head) for offline use."""
    from qwq_local import catalog

    settings = settings_from(models_dir=models_dir)
    path = catalog.pull(model, settings.models_dir, progress=sys.stderr.isatty())
    typer.echo(str(path))


@app.command()
def models(models_dir: Optional[Path] = ModelsDirOpt,
           as_json: bool = typer.Option(False, "--json")) -> None:
    """The catalog and what is already local, with sizes."""
    from qwq_local import catalog
    from qwq_local.reports import print_models

    settings = settings_from(models_dir=models_dir)
    print_models(catalog.list_models(settings.models_dir), as_json=as_json)


@app.command()
def info(model: str = typer.Argument(..., help="Catalog name or .gguf path."),
         ctx: Optional[int] = CtxOpt, gpu_layers: Optional[str] = GpuOpt,
         models_dir: Optional[Path] = ModelsDirOpt,
         as_json: bool = typer.Option(False, "--json")) -> None:
    """GGUF metadata and the memory plan for a context size."""
    from qwq_local import runtime
    from qwq_local.reports import print_info

    settings = settings_from(ctx=ctx, gpu_layers=gpu_layers, models_dir=models_dir)
    resolved = runtime.locate(model, settings, pull=False)
    plan = runtime.plan_model(resolved, settings)
    print_info(plan, as_json=as_json)


@app.command()
def doctor(models_dir: Optional[Path] = ModelsDirOpt,
           as_json: bool = typer.Option(False, "--json")) -> None:
    """The llama.cpp build and offload support, GPU memory, RAM, disk, cache dir, hub reachability."""
    from qwq_local.reports import doctor_report, print_doctor

    settings = settings_from(models_dir=models_dir)
    print_doctor(doctor_report(settings), as_json=as_json)


# ------------------------------------------------------------------------------------------- solve
@app.command()
def solve(
    file: str = typer.Argument(..., help="Markdown problem file, or - for stdin."),
    model: Optional[str] = ModelOpt,
    strategy: str = typer.Option("direct", "--strategy", "-s", help="direct | astar | beam | bon | sc"),
    fmt: str = typer.Option("auto", "--format", help="math | choice | code | plain | auto"),
    show_thinking: bool = typer.Option(False, "--show-thinking", help="Print the thinking too."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t"),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    top_k: Optional[int] = typer.Option(None, "--top-k"),
    min_p: Optional[float] = typer.Option(None, "--min-p"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    ctx: Optional[int] = CtxOpt,
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
    candidates: int = typer.Option(6, "--candidates", "-K", help="Candidate steps per expansion."),
    trajectories: int = typer.Option(6, "--trajectories", "-N", help="Terminal answers to collect."),
    beam: int = typer.Option(16, "--beam", "-B", help="Most open nodes kept."),
    beam_width: int = typer.Option(4, "--beam-width", help="Paths kept per depth by beam search."),
    lam: float = typer.Option(1.0, "--lambda", help="Weight of h in f = g + lambda*h."),
    agg: str = typer.Option("min", "--agg", help="min | max | sum | mean | last"),
    scorer: Optional[str] = typer.Option(None, "--scorer", help="qhead | self-eval | rules, comma-separated."),
    head: Optional[Path] = HeadOpt,
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Seconds for the search."),
    max_expansions: int = typer.Option(200, "--max-expansions", help="Most expansions (sample calls)."),
    max_depth: int = typer.Option(200, "--max-depth", help="Most steps in a path."),
    kv_budget: Optional[str] = typer.Option(None, "--kv-budget",
                                            help="KV the search may hold: tokens (4096) or bytes (512MiB, 2GB)."),
    show_tree: bool = typer.Option(False, "--show-tree", help="Draw the explored tree."),
    trace: Optional[Path] = typer.Option(None, "--trace", help="Write the whole tree as JSON."),
) -> None:
    """Answer a markdown problem once, by plain generation or by search."""
    from qwq_local.solve_cmd import run_solve

    settings = settings_from(model=model, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                             seed=seed, max_tokens=max_tokens, ctx=ctx, gpu_layers=gpu_layers,
                             models_dir=models_dir, kv_budget=kv_budget, head=head)
    run_solve(settings, file, strategy=strategy, fmt=fmt, show_thinking=show_thinking, as_json=as_json,
              search=dict(candidates=candidates, trajectories=trajectories, beam=beam, lam=lam, agg=agg,
                          beam_width=beam_width, time_limit=time_limit, max_tokens=max_tokens, max_expansions=max_expansions,
                          max_depth=max_depth),
              scorer=scorer, show_tree=show_tree, trace=trace)


# ------------------------------------------------------------------------------------------- chat
@app.command()
def chat(
    model: Optional[str] = ModelOpt,
    show_thinking: bool = typer.Option(False, "--show-thinking", help="Keep thinking open."),
    hide_thinking: bool = typer.Option(False, "--hide-thinking", help="Only a spinner while thinking."),
    think_budget: Optional[int] = typer.Option(None, "--think-budget", help="Close thinking after N tokens."),
    resume: Optional[int] = typer.Option(None, "--resume-id", hidden=True),
    resume_latest: bool = typer.Option(False, "--resume", help="Continue the latest conversation; --resume ID that one."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    ctx: Optional[int] = CtxOpt,
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
    head: Optional[Path] = HeadOpt,
) -> None:
    """Interactive chat with folded thinking (piped stdin: one message a line)."""
    from qwq_local.chat_cmd import run_chat_cmd

    settings = settings_from(model=model, temperature=temperature, seed=seed, max_tokens=max_tokens, ctx=ctx,
                             gpu_layers=gpu_layers, models_dir=models_dir, head=head)
    code = run_chat_cmd(settings, show_thinking=show_thinking, hide_thinking=hide_thinking,
                        think_budget=think_budget, resume=resume, resume_latest=resume_latest)
    if code:
        raise typer.Exit(code)


def _history_env():
    from qwq_local.config import user_data_dir
    from qwq_local.history import History
    from qwq_local.render.console import Env

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


# ------------------------------------------------------------------------------------------- head
@app.command("train-head")
def train_head_cmd(
    model: Optional[str] = ModelOpt,
    data: str = typer.Option("gsm8k-train", "--data", help="gsm8k-train or a training FILE.jsonl."),
    problems: int = typer.Option(200, "--problems", help="The first N problems."),
    rollouts: int = typer.Option(4, "--rollouts", help="M completions from after each step."),
    out: Path = typer.Option(..., "--out", help="The head file to write (.gguf)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label store (default OUT.labels.jsonl)."),
    kind: str = typer.Option("linear", "--kind", help="linear | mlp"),
    target: str = typer.Option("max", "--target", help="Q label: max (Q*) or mean over rollouts."),
    max_steps: int = typer.Option(12, "--max-steps", help="Steps of each sampled trajectory."),
    reply_tokens: int = typer.Option(384, "--reply-tokens", help="Token limit of a whole reply: trajectory and rollouts."),
    train_only: bool = typer.Option(False, "--train-only", help="Train on the labels already stored."),
    epochs: int = typer.Option(200, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t"),
    ctx: Optional[int] = CtxOpt,
    kv_budget: Optional[str] = typer.Option(None, "--kv-budget", help="Tokens (4096) or bytes (512MiB, 2GB)."),
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
) -> None:
    """Label steps by rollouts (resumable) and train a Q-value head on the policy's hidden states."""
    from qwq_local.train_cmd import run_train_head

    settings = settings_from(model=model, temperature=temperature, ctx=ctx, gpu_layers=gpu_layers,
                             models_dir=models_dir, kv_budget=kv_budget)
    run_train_head(settings, data=data, problems=problems, rollouts=rollouts, out=out, labels=labels, kind=kind,
                   target=target, max_steps=max_steps, reply_tokens=reply_tokens, train_only=train_only,
                   seed=seed, epochs=epochs)


@head_app.command("info")
def head_info_cmd(path: Path = typer.Argument(..., help="A Q-value head .gguf."),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """A head's metadata (backbone, layer, training data) and held-out metrics."""
    from qwq_local.train_cmd import run_head_info

    run_head_info(path, as_json)


@head_app.command("eval")
def head_eval_cmd(path: Path = typer.Argument(..., help="A Q-value head .gguf."),
                  labels: Path = typer.Option(..., "--labels", help="A label store of `qwq train-head` (.jsonl)."),
                  target: str = typer.Option("max", "--target", help="Q label: max or mean over rollouts."),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """A head's AUC, Brier and calibration on stored labels, by steps and reply ends, and how it picks a reply.

    Use labels the head was not trained on (another problem range of `qwq train-head --labels`).
    """
    from qwq_local.train_cmd import run_head_eval

    run_head_eval(path, labels, target, as_json)


# ------------------------------------------------------------------------------------------ bench
@bench_app.command("engine")
def bench_engine_cmd(
    model: list[str] = typer.Option(["smollm2-135m", "qwen2.5-coder-0.5b"], "--model", "-m"),
    ks: str = typer.Option("1,2,4,8", "--k", help="Sibling counts for batched expansion."),
    steps: int = typer.Option(48, "--steps", help="Tokens per step."),
    kv_budget: Optional[int] = typer.Option(None, "--kv-budget"),
    models_dir: Optional[Path] = ModelsDirOpt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """KV tree vs naive re-prefill (recompute ratio, wall time) and batched tok/s vs raw llama.cpp."""
    from qwq_local.bench.run import run_engine_bench

    try:
        counts = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--k {ks!r}: give sibling counts such as 1,2,4,8") from None
    if not counts or any(not 1 <= k <= 128 for k in counts):
        raise UsageError(f"--k {ks!r}: each sibling count must be from 1 to 128")
    run_engine_bench(settings_from(models_dir=models_dir), model, counts, steps, kv_budget, as_json)


@bench_app.command("chat")
def bench_chat_cmd(
    model: list[str] = typer.Option(["smollm2-135m", "qwen2.5-coder-0.5b"], "--model", "-m"),
    max_tokens: int = typer.Option(128, "--max-tokens"),
    runs: int = typer.Option(3, "--runs"),
    models_dir: Optional[Path] = ModelsDirOpt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Decode tok/s of the qwq chat/solve path vs llama-cpp-python create_completion; 2nd-turn prompt eval."""
    from qwq_local.bench.run import run_chat_bench

    run_chat_bench(settings_from(models_dir=models_dir), model, max_tokens, runs, as_json)


@bench_app.command("accuracy")
def bench_accuracy_cmd(
    data: str = typer.Option("gsm8k", "--data", help="gsm8k | math500 | mbpp | FILE.jsonl"),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="The first N problems."),
    strategy: str = typer.Option("direct,sc@4,bon@4,astar", "--strategy", "-s",
                                 help="Comma-separated NAME[@N][:SCORER+SCORER]."),
    model: Optional[str] = ModelOpt,
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Default: one seed per problem."),
    max_tokens: Optional[int] = typer.Option(512, "--max-tokens", help="Tokens of one reply."),
    ctx: Optional[int] = CtxOpt,
    candidates: int = typer.Option(4, "--candidates", "-K"),
    trajectories: int = typer.Option(4, "--trajectories", "-N"),
    beam: int = typer.Option(8, "--beam", "-B"),
    lam: float = typer.Option(1.0, "--lambda"),
    agg: str = typer.Option("min", "--agg"),
    max_expansions: int = typer.Option(40, "--max-expansions"),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Seconds per search."),
    results: Optional[Path] = typer.Option(None, "--results", help="JSONL of runs; a rerun resumes it."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of accuracy against generated tokens."),
    as_json: bool = typer.Option(False, "--json"),
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
    head: Optional[Path] = HeadOpt,
) -> None:
    """Accuracy, generated tokens and seconds per problem of each strategy on the same problems."""
    from qwq_local.bench.accuracy_run import run_accuracy_bench

    settings = settings_from(model=model, temperature=temperature, seed=seed, max_tokens=max_tokens, ctx=ctx,
                             gpu_layers=gpu_layers, models_dir=models_dir, head=head)
    run_accuracy_bench(settings, data, limit, strategy,
                       dict(candidates=candidates, trajectories=trajectories, beam=beam, lam=lam, agg=agg,
                            max_expansions=max_expansions, time_limit=time_limit),
                       results, as_json, plot)


# -------------------------------------------------------------------------------------- entry point
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
        sys.exit(getattr(exc, "exit_code", 0))
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
        typer.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        sys.exit(int(ExitCode.ERROR))
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main", "json", "UsageError"]
