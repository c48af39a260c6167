"""What is on disk: resolve a MODEL to local files without any network, and list the catalog's state."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from qwq_local.catalog import integrity
from qwq_local.catalog.gguf_info import GGUFInfo
from qwq_local.catalog.hub_env import offline_mode
from qwq_local.catalog.pypi_source import stale_temp_dirs
from qwq_local.catalog.refs import CatalogRef, HubRef, PathRef, parse_ref, shard_names
from qwq_local.catalog.spec import HeadSpec, ModelSpec, load_catalog
from qwq_local.errors import ExitCode, InputFileError, NotPulledError, UsageError


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: its .gguf (first shard if split), catalog spec if any, local Q-head if any."""

    path: Path
    spec: ModelSpec | None = None
    head: Path | None = None


@dataclass(frozen=True)
class ModelRow:
    """One line of `qwq models`."""

    name: str
    source: str
    quant: str
    size: int | None
    local: bool
    local_size: int
    default: bool = False
    size_approx: bool = False


def resolve(model: str, models_dir: Path) -> ResolvedModel:
    """Map MODEL to local files; never touches the network (NotPulledError when a pull is needed)."""
    ref = parse_ref(model)
    if isinstance(ref, PathRef):
        return ResolvedModel(path=check_model_path(ref.path))
    paths = ref.local_paths(models_dir)
    if not all(p.is_file() for p in paths):
        raise not_pulled(model)
    if isinstance(ref, HubRef):
        return ResolvedModel(path=paths[0])
    return ResolvedModel(path=paths[0], spec=ref.spec, head=head_path(ref.spec.head, models_dir))


def download_size(model: str, models_dir: Path) -> int | None:
    """Bytes a pull of MODEL would fetch now: None when its files are here (or it is a path), 0 when unknown."""
    ref = parse_ref(model)
    if isinstance(ref, PathRef) or all(p.is_file() for p in ref.local_paths(models_dir)):
        return None
    return (ref.spec.size or 0) if isinstance(ref, CatalogRef) else 0


def recorded_info(model: str, models_dir: Path) -> tuple[ResolvedModel, GGUFInfo] | None:
    """A catalog model's would-be files and GGUF facts from the catalog alone (None if it records none)."""
    ref = parse_ref(model)
    if not isinstance(ref, CatalogRef) or ref.spec.gguf is None:
        return None
    spec, facts = ref.spec, ref.spec.gguf
    path = spec.local_paths(models_dir)[0]
    info = GGUFInfo(
        path=path, architecture=spec.architecture, name=spec.title, parameter_count=facts.parameters,
        quant=spec.quant.upper(), file_size=spec.size or 0, shard_count=len(spec.files),
        context_length=spec.native_context, rope_freq_base=facts.rope_freq_base, rope_scaling_type=None,
        rope_scaling_factor=None, rope_original_context=None, chat_template=None, n_layer=facts.n_layer,
        n_head=facts.n_head, n_head_kv=facts.n_head_kv, n_embd=facts.n_embd, head_dim=facts.head_dim,
        value_dim=facts.value_dim,
    )
    return ResolvedModel(path=path, spec=spec, head=head_path(spec.head, models_dir)), info


def pulled_files(model: str, models_dir: Path) -> list[Path]:
    """A pulled model's files under models_dir: its .gguf files and any partial download beside them (files, and
    the wheel folders of a killed PyPI pull).

    NotPulledError when none is there; UsageError for a path the user gave (qwq removes only what it pulled).
    """
    ref = parse_ref(model)
    if isinstance(ref, PathRef):
        raise UsageError(f"{model} is a file of yours, not a pulled model: qwq rm removes only what qwq pull fetched")
    found = []
    for path in ref.local_paths(models_dir):
        found += [p for p in (path, *(path.with_name(path.name + s) for s in _DOWNLOAD_SUFFIXES)) if p.is_file()]
        found += stale_temp_dirs(path)  # a killed pull's wheel downloads
    if not found:
        raise NotPulledError(f"model {model} is not pulled (nothing of it in {models_dir})")
    return found


_DOWNLOAD_SUFFIXES = (".part", ".part.etag", ".lock")


def disk_bytes(path: Path) -> int:
    """The bytes of a file, or of the files in a folder."""
    if path.is_dir() and not path.is_symlink():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size


def remove_files(paths: list[Path], models_dir: Path) -> int:
    """Delete a model's files (from pulled_files) and the folders they leave empty; the bytes freed."""
    freed = 0
    for path in paths:
        freed += disk_bytes(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    folders = {parent for p in paths for parent in p.parents if models_dir in parent.parents}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        while folder.is_dir() and folder != models_dir and models_dir in folder.parents and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    return freed


def check_model_path(path: Path) -> Path:
    """A user-given model path must be an existing file (InputFileError otherwise)."""
    if path.is_dir():
        raise InputFileError(f"{path} is a directory, not a .gguf file", ExitCode.IS_A_DIRECTORY)
    if not path.is_file():
        raise InputFileError(f"model file not found: {path}", ExitCode.FILE_NOT_FOUND)
    return path


def not_pulled(asked: str, offline: bool | None = None) -> NotPulledError:
    """NotPulledError telling the user to pull, or that they are offline."""
    if offline_mode() if offline is None else offline:
        return NotPulledError(f"model {asked} is not pulled and offline mode is on (HF_HUB_OFFLINE); pull it online")
    return NotPulledError(f"model {asked} is not pulled yet: run `qwq pull {asked}`")


def head_path(head: HeadSpec | None, models_dir: Path) -> Path | None:
    """The Q-value head file if the catalog names one and it is present locally."""
    if head is None:
        return None
    if head.shipped:
        return load_catalog().shipped_head_path(head)
    path = hub_head_path(head, models_dir)
    return path if path.is_file() else None


def hub_head_path(head: HeadSpec, models_dir: Path) -> Path:
    return models_dir / "heads" / head.name / (head.filename or "").rsplit("/", 1)[-1]


def list_models(models_dir: Path) -> list[ModelRow]:
    """Every catalog quant with its local state, then any pulled hf: files."""
    rows = [_catalog_row(spec, models_dir) for spec in load_catalog().specs()]
    return rows + _hub_rows(models_dir)


def _catalog_row(spec: ModelSpec, models_dir: Path) -> ModelRow:
    paths = spec.local_paths(models_dir)
    return ModelRow(
        name=spec.name,
        source=spec.repo or "pypi",
        quant=spec.quant,
        size=spec.size,
        local=all(p.is_file() for p in paths),
        local_size=_bytes_on_disk(paths),
        default=spec.is_default_quant,
        size_approx=any(f.size is None for f in spec.files),
    )


def _hub_rows(models_dir: Path) -> list[ModelRow]:
    root = models_dir / "hf"
    rows: list[ModelRow] = []
    for path in sorted(root.glob("*/*/**/*.gguf")) if root.is_dir() else []:
        relative = path.relative_to(root).parts
        repo, filename = "/".join(relative[:2]), "/".join(relative[2:])
        shards = shard_names(filename)
        if filename != shards[0]:
            continue  # listed once, under the first shard
        paths = [root / repo / s for s in shards]
        rows.append(
            ModelRow(
                name=f"hf:{repo}/{filename}",
                source=repo,
                quant=_quant_from_name(filename),
                size=None,
                local=all(p.is_file() for p in paths),
                local_size=_bytes_on_disk(paths),
            )
        )
    return rows


def _bytes_on_disk(paths: list[Path]) -> int:
    """Complete files plus partial downloads, so `qwq models` shows interrupted pulls too."""
    total = 0
    for path in paths:
        for candidate in (path, integrity.part_path(path)):
            if candidate.is_file():
                total += candidate.stat().st_size
    return total


def _quant_from_name(filename: str) -> str:
    stem = filename.rsplit("/", 1)[-1].removesuffix(".gguf")
    for token in reversed(stem.replace(".", "-").split("-")):
        if token[:1].upper() in {"Q", "F", "B", "I"} and any(c.isdigit() for c in token):
            return token.lower()
    return "?"
