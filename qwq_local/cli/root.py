"""The `qwq` Typer apps and the options several commands share, declared once."""

from __future__ import annotations

from typing import Any

import typer

from qwq_local import __version__
from qwq_local.config import Settings

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
JsonOpt = typer.Option(False, "--json", help="Print JSON.")
CacheKOpt = typer.Option(None, "--cache-type-k", help="KV cache K type: f16 | q8_0 | q4_0 [default: f16].")
CacheVOpt = typer.Option(None, "--cache-type-v",
                         help="KV cache V type: f16 | q8_0 | q4_0 (quantised needs --flash-attn) [default: f16].")
FlashOpt = typer.Option(None, "--flash-attn/--no-flash-attn", help="llama.cpp's flash attention [default: off].")
SystemOpt = typer.Option(None, "--system", help="A system prompt before the conversation (QWQ_SYSTEM).")
PresenceOpt = typer.Option(None, "--presence-penalty",
                           help="0-2: penalise tokens already said, against endless repetition [default: 0, off].")
RepeatOpt = typer.Option(None, "--repeat-penalty", help="llama.cpp's repetition penalty [default: 1, off].")


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


def settings_from(**flags: Any) -> Settings:
    """Settings: defaults < config file < QWQ_* environment < these flags (None: not given)."""
    from qwq_local.config import load_settings

    return load_settings(flags)
