"""`qwq pull`, `qwq models`, `qwq info`, `qwq doctor`: models on disk and the machine they run on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from qwq_local.cli.root import ApiKeyOpt, CtxOpt, EngineOpt, GpuOpt, JsonOpt, ModelsDirOpt, app, settings_from


@app.command()
def pull(model: str = typer.Argument(..., help="Catalog name, hf:REPO/FILE."),
         models_dir: Optional[Path] = ModelsDirOpt) -> None:
    """Download a model (and its Q-value head) for offline use."""
    from qwq_local import catalog

    settings = settings_from(models_dir=models_dir)
    path = catalog.pull(model, settings.models_dir, progress=sys.stderr.isatty())
    typer.echo(str(path))


@app.command()
def models(models_dir: Optional[Path] = ModelsDirOpt, as_json: bool = JsonOpt) -> None:
    """The catalog and what is already local, with sizes."""
    from qwq_local import catalog
    from qwq_local.render.reports import print_models

    settings = settings_from(models_dir=models_dir)
    print_models(catalog.list_models(settings.models_dir), as_json=as_json)


@app.command()
def info(model: str = typer.Argument(..., help="Catalog name or .gguf path."),
         ctx: Optional[int] = CtxOpt, gpu_layers: Optional[str] = GpuOpt,
         models_dir: Optional[Path] = ModelsDirOpt, as_json: bool = JsonOpt) -> None:
    """GGUF metadata and the memory plan for a context size."""
    from qwq_local.app import runtime
    from qwq_local.render.reports import print_info

    settings = settings_from(ctx=ctx, gpu_layers=gpu_layers, models_dir=models_dir)
    resolved = runtime.locate(model, settings, pull=False)
    print_info(runtime.plan_model(resolved, settings), as_json=as_json)


@app.command()
def doctor(models_dir: Optional[Path] = ModelsDirOpt, as_json: bool = JsonOpt, engine: Optional[str] = EngineOpt,
           api_key: Optional[str] = ApiKeyOpt) -> None:
    """The llama.cpp build and offload support, GPU memory, RAM, disk, cache dir, hub reachability.

    With --engine: what that server serves and supports instead (models, n > 1, log-probs, prefix cache).
    """
    settings = settings_from(models_dir=models_dir, engine=engine, api_key=api_key)
    if settings.engine is not None:
        from qwq_local.app.remote import engine_report
        from qwq_local.render.reports import print_engine

        print_engine(engine_report(settings), as_json=as_json)
        return
    from qwq_local.app.doctor import doctor_report
    from qwq_local.render.reports import print_doctor

    print_doctor(doctor_report(settings), as_json=as_json)
