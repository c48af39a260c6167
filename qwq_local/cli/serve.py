"""`qwq serve`: the OpenAI-compatible HTTP server on a model loaded once."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from qwq_local.cli.root import (Command, CtxOpt, GpuOpt, HeadOpt, ModelOpt, ModelsDirOpt, YesOpt, ChatTemplateOpt, app, confirm_download,
                                settings_from)
from qwq_local.serve.options import ServeOptions as O

_D = O()


@app.command(cls=Command)
def serve(
    model: Optional[str] = ModelOpt,
    host: str = typer.Option(_D.host, "--host", help="Address to bind; anything but loopback needs --api-key."),
    port: int = typer.Option(_D.port, "--port", help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="QWQ_API_KEY",
                                          help="Require `Authorization: Bearer KEY` (QWQ_API_KEY)."),
    cors: List[str] = typer.Option([], "--cors", help="Allow browser requests from ORIGIN (repeatable)."),
    think_budget: Optional[int] = typer.Option(None, "--think-budget",
                                               help="Thinking budget for requests that set none."),
    max_tokens_limit: Optional[int] = typer.Option(None, "--max-tokens-limit",
                                                   help="Most tokens a request may ask for (default: the context)."),
    max_body: int = typer.Option(_D.max_body_bytes, "--max-body", help="Largest request body in bytes."),
    queue: int = typer.Option(_D.queue, "--queue", help="Requests that may wait; more get 429."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t", help="Default temperature."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Default tokens of a reply."),
    ctx: Optional[int] = CtxOpt,
    gpu_layers: Optional[str] = GpuOpt,
    models_dir: Optional[Path] = ModelsDirOpt,
    head: Optional[Path] = HeadOpt,
    chat_template: Optional[str] = ChatTemplateOpt,
    yes: bool = YesOpt,
) -> None:
    """Serve the model over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models)."""
    from qwq_local.serve.run import serve as run_server

    settings = settings_from(model=model, temperature=temperature, max_tokens=max_tokens, ctx=ctx,
                             gpu_layers=gpu_layers, models_dir=models_dir, head=head, chat_template=chat_template)
    options = O(host=host, port=port, api_key=api_key, cors=tuple(cors), max_body_bytes=max_body,
                max_tokens=max_tokens_limit, queue=queue, think_budget=think_budget).check()
    run_server(settings, options, before_load=lambda: confirm_download(settings, yes))
