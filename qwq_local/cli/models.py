"""`qwq pull`, `qwq rm`, `qwq models`, `qwq info`, `qwq doctor`: models on disk and the machine they run on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from qwq_local.cli.root import (
    ApiKeyOpt,
    Command,
    EngineOpt,
    CacheKOpt,
    CacheVOpt,
    CtxOpt,
    FlashOpt,
    GpuOpt,
    JsonOpt,
    ModelsDirOpt,
    app,
    settings_from,
)


@app.command(cls=Command)
def pull(model: str = typer.Argument(..., help="Catalog name, hf:REPO/FILE."),
         models_dir: Optional[Path] = ModelsDirOpt) -> None:
    """Download a model (and its Q-value head) for offline use."""
    from qwq_local import catalog

    settings = settings_from(models_dir=models_dir, samples=False)
    path = catalog.pull(model, settings.models_dir, progress=sys.stderr.isatty())
    typer.echo(str(path))


@app.command(cls=Command)
def rm(model: str = typer.Argument(..., help="Catalog name or hf:REPO/FILE of a pulled model."),
       yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking."),
       models_dir: Optional[Path] = ModelsDirOpt) -> None:
    """Remove a pulled model's files (and any partial download of it)."""
    from qwq_local import catalog
    from qwq_local.render.reports import fmt_bytes

    settings = settings_from(models_dir=models_dir, samples=False)
    files = catalog.pulled_files(model, settings.models_dir)
    size = fmt_bytes(sum(catalog.disk_bytes(f) for f in files))
    listing = "\n".join(f"  {f}" for f in files)
    if not yes and not typer.confirm(f"Remove {model} ({size}):\n{listing}\n", default=False, err=True):
        typer.echo("nothing removed", err=True)
        return
    freed = catalog.remove_files(files, settings.models_dir)
    typer.echo(f"removed {model} ({fmt_bytes(freed)})")


@app.command(cls=Command)
def models(models_dir: Optional[Path] = ModelsDirOpt, as_json: bool = JsonOpt) -> None:
    """The catalog and what is already local, with sizes."""
    from qwq_local import catalog
    from qwq_local.render.reports import print_models

    settings = settings_from(models_dir=models_dir, samples=False)
    print_models(catalog.list_models(settings.models_dir), as_json=as_json)


@app.command(cls=Command)
def info(model: str = typer.Argument(..., help="Catalog name or .gguf path."),
         ctx: Optional[int] = CtxOpt, gpu_layers: Optional[str] = GpuOpt,
         cache_type_k: Optional[str] = CacheKOpt, cache_type_v: Optional[str] = CacheVOpt,
         flash_attn: Optional[bool] = FlashOpt,
         models_dir: Optional[Path] = ModelsDirOpt, as_json: bool = JsonOpt) -> None:
    """GGUF metadata and the memory plan for a context size (a catalog model's, before it is pulled)."""
    from qwq_local.app import runtime
    from qwq_local.render.reports import print_info

    settings = settings_from(samples=False, ctx=ctx, gpu_layers=gpu_layers, models_dir=models_dir, cache_type_k=cache_type_k,
                             cache_type_v=cache_type_v, flash_attn=flash_attn)
    print_info(runtime.plan_for_info(model, settings), as_json=as_json)


@app.command(cls=Command)
def doctor(models_dir: Optional[Path] = ModelsDirOpt, as_json: bool = JsonOpt, engine: Optional[str] = EngineOpt,
           api_key: Optional[str] = ApiKeyOpt) -> None:
    """The llama.cpp build and offload support, GPU memory, RAM, disk, cache dir, hub reachability.

    With --engine: what that server serves and supports instead (models, n > 1, log-probs, prefix cache).
    """
    settings = settings_from(models_dir=models_dir, engine=engine, api_key=api_key, samples=False)
    if settings.engine is not None:
        from qwq_local.app.remote import engine_report
        from qwq_local.render.reports import print_engine

        print_engine(engine_report(settings), as_json=as_json)
        return
    from qwq_local.app.doctor import doctor_report
    from qwq_local.render.reports import print_doctor

    print_doctor(doctor_report(settings), as_json=as_json)
