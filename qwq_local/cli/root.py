"""The `qwq` Typer apps and the options several commands share, declared once."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from qwq_local import __version__
from qwq_local.config import Sampling, Settings



def _plain_params(params: list[Any]) -> list[Any]:
    """Help without Typer's type labels: none on a flag (`--json`), a click-style word on a value."""
    for param in params:
        if param.param_type_name == "argument":
            if param.metavar is None:  # the argument's own name (FILE, RESULTS), not its type
                param.metavar = param.name.upper()
            param.display_type_rich = lambda ctx=None: None  # no `<str>` column beside it
            continue
        if getattr(param, "is_flag", False):
            param.metavar = param.metavar or ""
        elif param.metavar is None:
            bare = param.bare_type() if hasattr(param, "bare_type") else "str"
            param.metavar = {"int": "N", "float": "X", "Path": "PATH"}.get(bare, "TEXT")
    return params


class Command(TyperCommand):
    """Every qwq command: help with plain labels."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))


class Group(TyperGroup):
    """Every qwq command group: help with plain labels."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_params(super().get_params(ctx))


app = typer.Typer(cls=Group, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Local reasoning assistant: QwQ-32B on llama.cpp with step-level A* search.")
head_app = typer.Typer(cls=Group, no_args_is_help=True, help="Q-value heads.")
bench_app = typer.Typer(cls=Group, no_args_is_help=True, help="Benchmarks: engine speed, accuracy.")
history_app = typer.Typer(cls=Group, invoke_without_command=True, help="Saved conversations.")
app.add_typer(head_app, name="head")
app.add_typer(bench_app, name="bench")
app.add_typer(history_app, name="history")

ModelOpt = typer.Option(None, "--model", "-m", envvar="QWQ_MODEL", help="Catalog name, .gguf path or hf:REPO/FILE.")
ModelsDirOpt = typer.Option(None, "--models-dir", envvar="QWQ_MODELS_DIR", help="Where weights live.")
CtxOpt = typer.Option(None, "--ctx", envvar="QWQ_CTX", help="Context size in tokens (YaRN beyond the native length).")
GpuOpt = typer.Option(None, "--gpu-layers", envvar="QWQ_GPU_LAYERS", help="auto | all | N layers on the GPU.")
HeadOpt = typer.Option(None, "--head", envvar="QWQ_HEAD", help="Q-value head .gguf instead of the catalog's.")
JsonOpt = typer.Option(False, "--json", help="Print JSON.")
EngineOpt = typer.Option(None, "--engine", envvar="QWQ_ENGINE",
                         help="URL of an OpenAI-compatible server that runs the model.")
ApiKeyOpt = typer.Option(None, "--api-key", envvar="QWQ_API_KEY", help="Bearer token for --engine.")
SystemOpt = typer.Option(None, "--system", envvar="QWQ_SYSTEM", help="A system prompt before the conversation.")
ThinkBudgetOpt = typer.Option(None, "--think-budget", help="Close the thinking after N tokens (the model is told to "
                              "answer now); the loop guard closes it in a loop either way.")


def _default(value: str) -> str:
    """Help's default for an option whose own default is None (so that config and env can set it)."""
    return rf" \[default: {value}]"


_S = Sampling()  # the defaults shown are the ones used
TemperatureOpt = typer.Option(None, "--temperature", "-t",
                              envvar="QWQ_TEMPERATURE",
                              help="Sampling temperature; 0 is greedy." + _default(f"{_S.temperature:g}"))
TopPOpt = typer.Option(None, "--top-p",
                       envvar="QWQ_TOP_P",
                       help="Nucleus sampling: the likeliest tokens up to this mass." + _default(f"{_S.top_p:g}"))
TopKOpt = typer.Option(None, "--top-k", envvar="QWQ_TOP_K",
                       help="Sample among the K likeliest tokens (0: all)." + _default(str(_S.top_k)))
MinPOpt = typer.Option(None, "--min-p",
                       envvar="QWQ_MIN_P",
                       help="Drop tokens less likely than this times the likeliest." + _default(f"{_S.min_p:g}"))
SeedOpt = typer.Option(None, "--seed", envvar="QWQ_SEED",
                       help="Random seed, for a repeatable reply." + _default("random"))
MaxTokensOpt = typer.Option(None, "--max-tokens",
                            envvar="QWQ_MAX_TOKENS",
                            help="Most tokens in a reply (thinking included); QwQ without it: up to the context."
                            + _default(str(_S.max_tokens)))
PresenceOpt = typer.Option(None, "--presence-penalty",
                           envvar="QWQ_PRESENCE_PENALTY",
                           help="0-2: penalise tokens already said, against endless repetition." + _default("0, off"))
RepeatOpt = typer.Option(None, "--repeat-penalty", envvar="QWQ_REPEAT_PENALTY",
                         help="llama.cpp's repetition penalty." + _default("1, off"))
CacheKOpt = typer.Option(None, "--cache-type-k", envvar="QWQ_CACHE_TYPE_K",
                         help="KV cache K type: f16 | q8_0 | q4_0." + _default("f16"))
CacheVOpt = typer.Option(None, "--cache-type-v",
                         envvar="QWQ_CACHE_TYPE_V",
                         help="KV cache V type: f16 | q8_0 | q4_0 (quantised needs --flash-attn)." + _default("f16"))
FlashOpt = typer.Option(None, "--flash-attn/--no-flash-attn", envvar="QWQ_FLASH_ATTN",
                        help="llama.cpp's flash attention." + _default("off"))


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


def settings_from(*, samples: bool = True, **flags: Any) -> Settings:
    """Settings: defaults < config file < QWQ_* environment < these flags (None: not given); its warnings said once.
    `samples=False`: the command never samples, so bad sampling settings are only warned about."""
    from qwq_local.config import load_settings

    settings = load_settings(flags, samples=samples)
    for warning in settings.warnings:
        typer.echo(f"warning: {warning}", err=True)
    return settings


ChatTemplateOpt = typer.Option(None, "--chat-template", envvar="QWQ_CHAT_TEMPLATE",
                               help="chatml, or a Jinja file: used instead of the model's own chat template.")
YesOpt = typer.Option(False, "--yes", "-y", envvar="QWQ_YES", help="Download a missing model without asking.")


def confirm_download(settings: Settings, yes: bool) -> None:
    """Before a large download (QwQ-32B: ~19 GiB) or one of unknown size (an `hf:` file): ask in a terminal, refuse
    in a script unless --yes (QWQ_YES=1). A bad --chat-template is said first, before anything is asked or fetched."""
    import sys

    from qwq_local.app.runtime import LARGE_DOWNLOAD, chat_template_override, pending_download
    from qwq_local.errors import ExitCode, QwqError
    from qwq_local.render.reports import fmt_bytes

    chat_template_override(settings)
    size = pending_download(settings)
    if yes or size is None or 0 < size < LARGE_DOWNLOAD:
        return
    model = settings.model
    what = fmt_bytes(size) if size else "size unknown"
    if sys.stdin.isatty() and sys.stderr.isatty():
        if typer.confirm(f"{model} is not downloaded yet: fetch it ({what}) into {settings.models_dir}?",
                         default=True, err=True):
            return
        raise QwqError(f"{model} not downloaded (`qwq pull {model}` fetches it)", ExitCode.DOWNLOAD_NOT_CONFIRMED)
    raise QwqError(f"{model} is not downloaded yet ({what}): run `qwq pull {model}` first, or pass --yes "
                   "(QWQ_YES=1) to fetch it now", ExitCode.DOWNLOAD_NOT_CONFIRMED)


# The search knobs (SearchConfig fields) as flags, declared once for `solve` and `bench accuracy`. None: the
# strategy's own default (app.search.search_defaults), so that a flag changes only what it names.
CandidatesOpt = typer.Option(None, "--candidates", "-K", help="Candidate steps per expansion.")
TrajectoriesOpt = typer.Option(None, "--trajectories", "-N", help="Finished paths (samples) to collect.")
BeamOpt = typer.Option(None, "--beam", "-B", help="Most open nodes A* keeps.")
BeamWidthOpt = typer.Option(None, "--beam-width", help="Paths kept per depth by beam search.")
LambdaOpt = typer.Option(None, "--lambda", help="Weight of h in f = g + lambda*h.")
AggOpt = typer.Option(None, "--agg", help="How step values make g: min | max | sum | mean | last | prod.")
TimeLimitOpt = typer.Option(None, "--time-limit", help="Seconds for a search.")
MaxExpansionsOpt = typer.Option(None, "--max-expansions", help="Most expansions (sample calls).")
MaxDepthOpt = typer.Option(None, "--max-depth", help="Steps A* branches; deeper states are completed.")
CompletionsOpt = typer.Option(None, "--completions", help="Replies completed from each open node at the end.")
ExpandWidthOpt = typer.Option(None, "--expand-width", help="Open nodes A* expands together in one batched decode.")
WidenOpt = typer.Option(None, "--widen", help="Most replies A* adds from the question while its paths disagree.")
SettleOpt = typer.Option(None, "--settle", help="Vote share of the leading answer at which A* stops widening.")
ChooseOpt = typer.Option(None, "--choose", help="A*'s answer: best | vote | value (value-weighted vote).")


def given(**values: object) -> dict[str, object]:
    """The flags a user set (not None), as SearchConfig changes."""
    return {name: value for name, value in values.items() if value is not None}
