"""Glue between catalog and engine: resolve a model, plan memory and context, load it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

from qwq_local import catalog
from qwq_local.catalog import GGUFInfo, ResolvedModel
from qwq_local.config import Settings
from qwq_local.engine.plan import (
    KVCache,
    OffloadPlan,
    RopePlan,
    detect_gpu,
    plan_offload,
    plan_rope,
    ram_free_bytes,
)
from qwq_local.errors import ExitCode, InputFileError, NotPulledError, UsageError

DEFAULT_YARN_FACTOR = 4.0


@dataclass(frozen=True)
class ModelPlan:
    """Everything decided before loading: files, metadata, context extension and offload."""

    resolved: ResolvedModel
    info: GGUFInfo
    n_ctx: int
    rope: RopePlan
    offload: OffloadPlan
    pulled: bool = True  # False: planned from the catalog's recorded facts, before the download
    cache: KVCache = KVCache()
    note: str | None = None  # one line for the user about the plan (YaRN switched on for a long prompt)
    chat_template: str | None = None  # the template given with --chat-template, used instead of the GGUF's

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token with this plan's cache types."""
        return self.info.kv_bytes_per_token(*self.cache.element_bytes)

    @property
    def thinks(self) -> bool:
        spec = self.resolved.spec
        return bool(spec and spec.thinking)


def locate(model: str, settings: Settings, *, pull: bool = True) -> ResolvedModel:
    """The local files for MODEL, pulling a catalog model first when it is missing and allowed."""
    try:
        return catalog.resolve(model, settings.models_dir)
    except NotPulledError:
        if not pull or catalog.offline_mode():
            raise
    catalog.pull(model, settings.models_dir)
    return catalog.resolve(model, settings.models_dir)


LARGE_DOWNLOAD = 2 * 2**30  # a front end asks before fetching more than this (QwQ-32B is ~19 GiB)


def pending_download(settings: Settings) -> int | None:
    """Bytes the model of `settings` must download before it can run here (None: nothing to fetch, or the hub is off
    limits, or a remote engine runs it; 0: a size the catalog does not record)."""
    if settings.engine is not None or catalog.offline_mode():
        return None
    return catalog.download_size(settings.model, settings.models_dir)


def chat_template_override(settings: Settings) -> str | None:
    """The chat template `--chat-template` names: "chatml", or a Jinja file (at most 1 MiB, UTF-8, compiling in the
    bounded sandbox every template runs in); None when none is given. Read and compiled once per file version (a
    command checks it before the download, then plans with it)."""
    from qwq_local.engine.template import CHATML

    value = settings.chat_template
    if value is None:
        return None
    if value.lower() == "chatml":
        return CHATML
    try:
        stat = Path(value).expanduser().stat()
        identity = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        identity = (-1, -1)  # not there: the read below says so
    return _template_file(value, *identity)


@functools.lru_cache(maxsize=8)
def _template_file(value: str, size: int, mtime_ns: int) -> str:
    from qwq_local.engine.template import MAX_TEMPLATE_BYTES, ChatTemplate, TemplateError

    path = Path(value).expanduser()
    what = f"--chat-template {value}"
    try:
        if path.is_dir():
            raise InputFileError(f"{what}: a directory, not a template file", ExitCode.IS_A_DIRECTORY)
        if path.exists() and not path.is_file():  # a FIFO would block the read, a device never end it
            raise InputFileError(f"{what}: not a regular file", ExitCode.NOT_A_REGULAR_FILE)
        with path.open("rb") as handle:
            data = handle.read(MAX_TEMPLATE_BYTES + 1)
    except FileNotFoundError:
        raise InputFileError(f"{what}: no such file (give chatml or a Jinja file)", ExitCode.FILE_NOT_FOUND) from None
    except OSError as exc:
        raise InputFileError(f"{what}: cannot be read ({exc.strerror})", ExitCode.PERMISSION_DENIED) from None
    if len(data) > MAX_TEMPLATE_BYTES:
        raise InputFileError(f"{what}: over {MAX_TEMPLATE_BYTES // 2**20} MiB, not a chat template", ExitCode.BAD_DATA)
    try:
        source = data.decode("utf-8")
        ChatTemplate(source, bos_token="", eos_token="")
    except UnicodeDecodeError:
        raise InputFileError(f"{what}: not UTF-8 text", ExitCode.BAD_DATA) from None
    except TemplateError as exc:
        raise InputFileError(f"{what}: does not compile ({exc})", ExitCode.BAD_DATA) from None
    return source


def plan_for_info(model: str, settings: Settings) -> ModelPlan:
    """`qwq info`'s plan: from the GGUF when pulled, else from the facts the catalog records (no download)."""
    try:
        resolved, info = locate(model, settings, pull=False), None
    except NotPulledError:
        recorded = catalog.recorded_info(model, settings.models_dir)
        if recorded is None:
            raise
        resolved, info = recorded
    return plan_model(resolved, settings, info=info, refuse=False)


def plan_model(resolved: ResolvedModel, settings: Settings, n_ctx: int | None = None,
               gpu_supported: bool | None = None, info: GGUFInfo | None = None,
               refuse: bool = True, prompt: str | None = None) -> ModelPlan:
    """Read the GGUF (unless its facts are given), choose YaRN for a long context and GPU layers for this machine."""
    cache = KVCache.parse(settings.cache_type_k, settings.cache_type_v, settings.flash_attn)
    pulled = info is None
    info = info or catalog.read_gguf_info(resolved.path)
    if gpu_supported is None:
        from qwq_local.engine.system import gpu_offload_supported

        gpu_supported = gpu_offload_supported()
    device, ram_free, per_token = detect_gpu(), ram_free_bytes(), info.kv_bytes_per_token(*cache.element_bytes)

    def offload_at(tokens: int, refuse_now: bool) -> OffloadPlan:
        return plan_offload(model_bytes=info.file_size, n_layer=info.n_layer, kv_bytes=per_token * tokens,
                            device=device, ram_free_bytes=ram_free, gpu_layers=settings.gpu_layers,
                            gpu_supported=gpu_supported, refuse=refuse_now)

    ctx = n_ctx or settings.ctx
    wanted = resolved.spec.default_context if resolved.spec else 0
    if n_ctx is None and "ctx" not in settings.given and wanted > ctx:
        # no --ctx: the model's own default (QwQ: 32,768), halved until model + KV fit with no layer moved off the GPU
        base = offload_at(ctx, False)
        while wanted > ctx:
            trial = offload_at(wanted, False)
            if not trial.shortfall_bytes and trial.n_gpu_layers >= base.n_gpu_layers:
                ctx = wanted
                break
            wanted //= 2
    native = info.context_length or (resolved.spec.native_context if resolved.spec else ctx)
    factor = resolved.spec.yarn_max_factor if resolved.spec else DEFAULT_YARN_FACTOR
    yarn_from = resolved.spec.yarn_from_tokens if resolved.spec else 0
    prompt_tokens = 0
    if yarn_from and prompt and len(prompt) > yarn_from:  # fewer characters than that are fewer tokens too
        from qwq_local.engine.model import count_tokens

        prompt_tokens = count_tokens(Path(resolved.path), prompt)
    rope = plan_rope(ctx, native, factor, prompt_tokens=prompt_tokens, yarn_from=yarn_from)
    note = None
    if rope.yarn and ctx <= native:
        note = (f"YaRN on (x{rope.factor:g} over {rope.orig_ctx:,}): the prompt is {prompt_tokens:,} tokens, past "
                f"the {yarn_from:,} after which the model card asks for it")
    offload = offload_at(ctx, refuse)
    return ModelPlan(resolved, info, ctx, rope, offload, pulled, cache, note, chat_template_override(settings))


def sized_to(plan: ModelPlan, settings: Settings) -> Settings:
    """`settings` with a reply as long as the planned context for a model with its own default context (QwQ's card:
    up to 32,768 output tokens on hard problems) when --max-tokens was not given anywhere."""
    spec = plan.resolved.spec
    if spec is None or not spec.default_context or "max_tokens" in settings.given:
        return settings
    return replace(settings, sampling=replace(settings.sampling, max_tokens=max(settings.sampling.max_tokens,
                                                                               plan.n_ctx)))


def yarn_later(plan: ModelPlan) -> tuple[int, RopePlan] | None:
    """(tokens, YaRN plan) for a chat that may grow past the card's threshold, when it does not run with YaRN yet."""
    spec = plan.resolved.spec
    if plan.rope.yarn or spec is None or not spec.yarn_from_tokens or spec.yarn_max_factor <= 1:
        return None
    return spec.yarn_from_tokens, RopePlan(yarn=True, factor=spec.yarn_max_factor, orig_ctx=plan.rope.orig_ctx)


def plan_remote(resolved: ResolvedModel, settings: Settings, recorded: GGUFInfo | None = None) -> ModelPlan:
    """The plan of a model a remote engine runs: its GGUF's metadata (template, tokenizer), nothing loaded here.

    `recorded`: the catalog's facts of a model whose file is not here (`pulled` False: the server's template is used).
    """
    info = recorded or catalog.read_gguf_info(resolved.path)
    native = info.context_length or (resolved.spec.native_context if resolved.spec else settings.ctx)
    factor = resolved.spec.yarn_max_factor if resolved.spec else DEFAULT_YARN_FACTOR
    offload = OffloadPlan(n_layer=info.n_layer, n_gpu_layers=0, model_bytes=info.file_size, kv_bytes=0, gpu_bytes=0,
                          ram_bytes=0, device=None, ram_free_bytes=0)
    return ModelPlan(resolved, info, settings.ctx, plan_rope(settings.ctx, native, factor), offload,
                     pulled=recorded is None, chat_template=chat_template_override(settings))


def plan_for(settings: Settings, prompt: str | None = None) -> ModelPlan:
    """The plan for `settings.model`: loaded here (pulled first if need be), or run by `settings.engine`.

    A remote engine takes the model's chat template and tokenizer from its GGUF here (only the vocabulary is
    read; never pulled for that), else, for a catalog model, from the server (llama-server's /props).
    """
    chat_template_override(settings)  # a bad --chat-template is said before any download or load
    if settings.engine is None:
        return plan_model(locate(settings.model, settings), settings, prompt=prompt)
    try:
        resolved = catalog.resolve(settings.model, settings.models_dir)
    except NotPulledError:
        recorded = catalog.recorded_info(settings.model, settings.models_dir)
        if recorded is None:
            raise NotPulledError(f"--engine: qwq applies {settings.model}'s chat template and counts its tokens "
                                 f"from its GGUF, which is not here: run `qwq pull {settings.model}` or give --model "
                                 "PATH.gguf (only its vocabulary is read)") from None
        return plan_remote(recorded[0], settings, recorded[1])  # the template is asked of the server
    return plan_remote(resolved, settings)


def kv_budget_tokens(plan: ModelPlan, settings: Settings) -> int | None:
    """The search's KV budget in tokens (cells); a size in bytes is divided by the model's KV bytes per token."""
    from qwq_local.config import parse_kv_budget

    amount, is_bytes = parse_kv_budget(settings.kv_budget)
    if is_bytes:
        amount //= max(plan.kv_bytes_per_token, 1)
        if amount < 1:
            raise UsageError(f"--kv-budget {settings.kv_budget} holds less than one token of this model's KV cache")
    return amount or None


# The chat context a search-only command loads beside its KV tree: the tree holds the planned context.
SEARCH_ONLY_CTX = 512


def load(plan: ModelPlan, settings: Settings, *, verbose: bool = False, chat_ctx: int | None = None):
    """Load the planned model into llama.cpp (-> LoadedModel).

    `chat_ctx`: a smaller context for the one-sequence chat engine, for commands whose work happens in
    a KV tree of the planned size, so that the KV cache is not held twice.
    """
    from qwq_local.engine.model import LoadedModel, LoadOptions

    seed = settings.sampling.seed if settings.sampling.seed is not None else 0xFFFFFFFF
    return LoadedModel(Path(plan.resolved.path), LoadOptions(
        n_ctx=min(chat_ctx, plan.n_ctx) if chat_ctx else plan.n_ctx, n_gpu_layers=plan.offload.llama_n_gpu_layers, rope=plan.rope,
        seed=seed, verbose=verbose, cache=plan.cache, chat_template=plan.chat_template,
    ))
