"""Searches on a remote OpenAI-compatible engine: the PolicyFactory over it, and what `qwq doctor --engine` asks it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from qwq_local.app import runtime
from qwq_local.app.search import SearchSetup
from qwq_local.config import Sampling, Settings
from qwq_local.errors import NotPulledError, QwqError


class RemotePolicies:
    """The PolicyFactory on a remote engine: each search gets a fresh RemotePolicy (no state lives on the server)."""

    def __init__(self, server: Any, prompt_format: Any, served_model: str | None, needs: str | None = None,
                 n_ctx: int | None = None) -> None:
        self.server = server
        self.n_ctx = n_ctx  # the server's context when it says it
        self.prompt_format = prompt_format  # None: the template is not known here (only plain chat, on the server's)
        self.served_model = served_model
        self.needs = needs  # why a search cannot run here, when prompt_format is None

    @contextlib.contextmanager
    def __call__(self, setup: SearchSetup, sampling: Sampling, history: Sequence[Any] = ()) -> Iterator[Any]:
        from qwq_local.engine.remote import RemotePolicy

        if self.prompt_format is None:
            raise NotPulledError(self.needs or "--engine: the model's chat template is not known here")
        policy = RemotePolicy(self.server, self.prompt_format, sampling, thinks=setup.plan.thinks,
                              model=self.served_model, max_reply_tokens=setup.config.max_reply_tokens,
                              history=list(history), n_ctx=self.n_ctx)
        try:
            yield policy
        finally:
            policy.close()


def served_model(models: Sequence[str], plan: runtime.ModelPlan) -> str | None:
    """The server's id for the planned model: the only one, or the one that names its family, else the first."""
    if not models:
        return None
    spec = plan.resolved.spec
    hints = [h.lower() for h in ((spec.family,) if spec else ()) + (plan.resolved.path.stem,)]
    for model in models:
        if any(h in model.lower() or model.lower() in h for h in hints):
            return model
    return models[0]


@contextlib.contextmanager
def remote_policies(plan: runtime.ModelPlan, settings: Settings) -> Iterator[RemotePolicies]:
    """Policies on `settings.engine`, with the model's template and tokenizer read from its local GGUF, or, when
    that is not here, as the server gives them (llama-server's /props and /tokenize)."""
    from qwq_local.engine.remote_client import CompletionServer

    assert settings.engine is not None
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(CompletionServer(settings.engine, settings.api_key,
                                                      timeout=settings.engine_timeout))
        served = served_model(server.models(), plan)
        if plan.pulled:
            from qwq_local.engine.vocab import GGUFVocab

            prompt_format: Any = stack.enter_context(GGUFVocab(plan.resolved.path,
                                                                    plan.chat_template or plan.info.chat_template))
        else:
            from qwq_local.engine.server_format import ServerFormat

            prompt_format = ServerFormat.discover(server, served, override=plan.chat_template)
        needs = None if prompt_format else (
            f"--engine: a search (and solve) applies {settings.model}'s chat template here, and its GGUF is not "
            f"here nor does the engine at {server.url} say it (llama-server's /props): run `qwq pull "
            f"{settings.model}` (only its vocabulary is read) or give --model PATH.gguf; plain chat works as it is")
        yield RemotePolicies(server, prompt_format, served, needs, n_ctx=server.context_length(served))


@dataclass(frozen=True)
class EngineReport:
    """What `qwq doctor --engine` found out about a server."""

    url: str
    models: list[str]
    n_choices: bool | None  # honours n > 1 (None: could not tell)
    logprobs: int  # top log-probs it returns per token (0: none)
    kind: str | None  # llama-server, vLLM, llama_cpp.server, when it says
    prefix_cache: str | None  # what it says about a prefix cache

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "models": self.models, "n_gt_1": self.n_choices, "logprobs": self.logprobs,
                "kind": self.kind, "prefix_cache": self.prefix_cache}


def engine_report(settings: Settings) -> EngineReport:
    """Ask the engine what it serves and supports, with one-token requests; an unreachable engine is an error."""
    from qwq_local.engine.remote import TOP_LOGPROBS
    from qwq_local.engine.remote_client import CompletionServer

    assert settings.engine is not None
    with CompletionServer(settings.engine, settings.api_key, timeout=min(settings.engine_timeout, 120.0)) as server:
        models = server.models()
        kind, cache = _server_kind(server)
        body: dict[str, Any] = {"prompt": "1, 2, 3,", "max_tokens": 1, "n": 2, "temperature": 1.0}
        if models:
            body["model"] = models[0]
        n_choices: bool | None = None
        logprobs = 0
        for asked in (TOP_LOGPROBS, 5, 0):  # what qwq asks for first, then OpenAI's limit, then none
            try:
                reply = server.complete(dict(body, logprobs=asked) if asked else body)
            except QwqError:
                continue
            n_choices = len(reply.choices) >= 2
            top = reply.choices[0].top_logprobs
            logprobs = min(len(top[0]), asked) if top else 0
            break
        return EngineReport(server.url, models, n_choices, logprobs, kind, cache)


def _server_kind(server: Any) -> tuple[str | None, str | None]:
    """Which server this is and what it says about prefix caching, from the endpoints each kind has."""
    probes = (("GET", "/props", "llama-server"), ("GET", "/version", "vLLM"))
    for method, path, kind in probes:
        try:
            data = server.request(method, path, retry=False)
        except QwqError:
            continue
        if kind == "llama-server" and isinstance(data, dict):
            slots = data.get("total_slots")
            return kind, f"cache_prompt per slot ({slots} slots)" if slots else "cache_prompt per slot"
        if kind == "vLLM" and isinstance(data, dict) and "version" in data:
            return f"vLLM {data['version']}", "automatic prefix caching when started with --enable-prefix-caching"
    try:
        server.request("POST", "/extras/tokenize", {"input": "x"}, retry=False)
        return "llama_cpp.server", "reuses the longest common prefix with the previous request"
    except QwqError:
        return None, None
