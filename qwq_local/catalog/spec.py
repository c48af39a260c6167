"""The model catalog as typed data: models/catalog.toml parsed into frozen dataclasses."""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from qwq_local.errors import ExitCode, QwqError, UnknownModelError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CATALOG_FILE = "catalog.toml"
SOURCES = ("hub", "pypi")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FileSpec:
    """One file of a model in its hub repo; size and sha256 are None where not recorded."""

    name: str
    size: int | None = None
    sha256: str | None = None

    @property
    def basename(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class WheelSpec:
    """A PyPI wheel carrying (part of) a model file as zip members."""

    package: str
    version: str
    sha256: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class HeadSpec:
    """A Q-value head: a file shipped in models/ (path) or a hub file (repo, filename, sha256)."""

    name: str
    path: str | None = None
    repo: str | None = None
    filename: str | None = None
    sha256: str | None = None
    revision: str = "main"

    @property
    def shipped(self) -> bool:
        return self.path is not None


@dataclass(frozen=True)
class GGUFFacts:
    """The few GGUF facts a memory plan needs, recorded in the catalog so `qwq info` works before a pull."""

    parameters: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_embd: int
    head_dim: int
    value_dim: int
    rope_freq_base: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One pullable catalog entry: a model family at one quantization."""

    family: str
    quant: str
    title: str
    architecture: str
    chat_template: str
    native_context: int
    yarn_max_factor: float
    thinking: bool
    think_prefix: str
    files: tuple[FileSpec, ...]
    repo: str | None = None
    revision: str = "main"
    sources: tuple[str, ...] = ("hub",)
    pypi: tuple[WheelSpec, ...] = ()
    head: HeadSpec | None = None
    approx_size: int | None = None
    is_default_quant: bool = False
    gguf: GGUFFacts | None = None
    yarn_from_tokens: int = 0  # prompts longer than this run with YaRN (QwQ's card: 8,192); 0 = only past native
    default_context: int = 0  # the context a run gets without --ctx, where the memory plan allows (QwQ: 32,768)

    @property
    def name(self) -> str:
        return f"{self.family}:{self.quant}"

    @property
    def is_split(self) -> bool:
        return len(self.files) > 1

    @property
    def max_context(self) -> int:
        return int(self.native_context * self.yarn_max_factor)

    @property
    def size(self) -> int | None:
        """Total bytes: exact when every file size is recorded, else the approximate size."""
        if all(f.size is not None for f in self.files):
            return sum(f.size or 0 for f in self.files)
        return self.approx_size

    def local_dir(self, models_dir: Path) -> Path:
        return models_dir / self.family

    def local_paths(self, models_dir: Path) -> list[Path]:
        """Where the pulled files live: models_dir/<family>/<file basename>, shards side by side."""
        return [self.local_dir(models_dir) / f.basename for f in self.files]


@dataclass(frozen=True)
class Catalog:
    """All catalog models (by family) with their quants, and the named Q-value heads."""

    families: Mapping[str, Mapping[str, ModelSpec]]
    default_quants: Mapping[str, str]
    heads: Mapping[str, HeadSpec]
    default: str
    source: Path | None = None

    def names(self) -> list[str]:
        """Every accepted name: each family (its default quant) and each family:quant."""
        out: list[str] = []
        for family, quants in self.families.items():
            out.append(family)
            out.extend(f"{family}:{q}" for q in quants)
        return out

    def specs(self) -> list[ModelSpec]:
        return [spec for quants in self.families.values() for spec in quants.values()]

    def lookup(self, name: str) -> ModelSpec:
        """The spec for `family` or `family:quant`; UnknownModelError lists close names."""
        family, _, quant = name.strip().lower().partition(":")
        quants = self.families.get(family)
        if quants is not None:
            spec = quants.get(quant or self.default_quants[family])
            if spec is not None:
                return spec
        close = difflib.get_close_matches(name.lower(), self.names(), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self.families)}"
        raise UnknownModelError(f"unknown model {name!r}{hint} (or give a .gguf path or hf:REPO/FILE)")

    def shipped_head_path(self, head: HeadSpec) -> Path | None:
        """The shipped head file next to the catalog, if it is there."""
        if head.path is None or self.source is None:
            return None
        path = self.source.parent / head.path
        return path if path.is_file() else None


def catalog_path(env: Mapping[str, str] = os.environ) -> Path:
    """QWQ_CATALOG if set, else the installed catalog (package data qwq_local.models), else the source tree's."""
    if env.get("QWQ_CATALOG"):
        return Path(env["QWQ_CATALOG"]).expanduser()
    try:
        installed = resources.files("qwq_local.models") / CATALOG_FILE
        if installed.is_file():
            return Path(str(installed))
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "models" / CATALOG_FILE


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate the catalog TOML (cached per file version: the result is immutable)."""
    path = path or catalog_path()
    try:
        stat = path.stat()
    except OSError as exc:
        raise QwqError(f"cannot read the model catalog {path}: {exc.strerror}", ExitCode.BAD_CATALOG) from None
    return _load(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int, size: int) -> Catalog:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise QwqError(f"cannot read the model catalog {path}: {exc}", ExitCode.BAD_CATALOG) from None
    return parse_catalog(data, source=path)


def parse_catalog(data: Mapping[str, Any], source: Path | None = None) -> Catalog:
    """Build a Catalog from parsed TOML, raising QwqError on a malformed entry."""
    heads = {name: _parse_head(name, raw) for name, raw in data.get("heads", {}).items()}
    families: dict[str, dict[str, ModelSpec]] = {}
    defaults: dict[str, str] = {}
    for family, raw in data.get("models", {}).items():
        quants = raw.get("quants") or {}
        default_quant = raw.get("default_quant") or next(iter(quants), "")
        _require(default_quant in quants, f"model {family}: default_quant {default_quant!r} has no [quants] entry")
        head_name = raw.get("head")
        _require(head_name is None or head_name in heads, f"model {family}: unknown head {head_name!r}")
        families[family] = {
            quant: _parse_spec(family, quant, raw, q, heads.get(head_name or ""), quant == default_quant)
            for quant, q in quants.items()
        }
        defaults[family] = default_quant
    default = str(data.get("default", next(iter(families), "")))
    return Catalog(families=families, default_quants=defaults, heads=heads, default=default, source=source)


def _parse_spec(
    family: str, quant: str, raw: Mapping[str, Any], q: Mapping[str, Any], head: HeadSpec | None, default: bool
) -> ModelSpec:
    where = f"model {family}:{quant}"
    files = tuple(_parse_file(where, f) for f in q.get("files", []))
    _require(bool(files), f"{where}: no files")
    wheels = tuple(_parse_wheel(where, w) for w in q.get("pypi", []))
    sources = tuple(str(s) for s in raw.get("sources", ["hub"]))
    _require(all(s in SOURCES for s in sources), f"{where}: sources must be among {SOURCES}")
    _require("hub" not in sources or bool(raw.get("repo")), f"{where}: hub source without repo")
    _require("pypi" not in sources or bool(wheels), f"{where}: pypi source without [[pypi]] wheels")
    _require(not wheels or (len(files) == 1 and files[0].sha256 is not None), f"{where}: pypi needs one file + sha256")
    return ModelSpec(
        family=family,
        quant=quant,
        title=str(raw.get("title", family)),
        architecture=str(raw.get("architecture", "")),
        chat_template=str(raw.get("chat_template", "")),
        native_context=int(raw.get("native_context", 0)),
        yarn_max_factor=float(raw.get("yarn_max_factor", 1.0)),
        thinking=bool(raw.get("thinking", False)),
        think_prefix=str(raw.get("think_prefix", "<think>\n" if raw.get("thinking") else "")),
        files=files,
        repo=raw.get("repo"),
        revision=str(raw.get("revision", "main")),
        sources=sources,
        pypi=wheels,
        head=head,
        approx_size=q.get("approx_size"),
        is_default_quant=default,
        gguf=_parse_facts(where, raw["gguf"]) if "gguf" in raw else None,
        yarn_from_tokens=int(raw.get("yarn_from_tokens", 0)),
        default_context=int(raw.get("default_context", 0)),
    )


def _parse_facts(where: str, raw: Mapping[str, Any]) -> GGUFFacts:
    counts = ("parameters", "n_layer", "n_head", "n_head_kv", "n_embd", "head_dim")
    _require(all(isinstance(raw.get(k), int) and raw[k] > 0 for k in counts),
             f"{where}: [gguf] needs positive integers {', '.join(counts)}")
    base = raw.get("rope_freq_base")
    return GGUFFacts(
        parameters=raw["parameters"], n_layer=raw["n_layer"], n_head=raw["n_head"], n_head_kv=raw["n_head_kv"],
        n_embd=raw["n_embd"], head_dim=raw["head_dim"], value_dim=int(raw.get("value_dim", raw["head_dim"])),
        rope_freq_base=float(base) if base is not None else None,
    )


def _parse_file(where: str, raw: Mapping[str, Any]) -> FileSpec:
    sha = raw.get("sha256")
    _require(sha is None or bool(_SHA256.fullmatch(str(sha))), f"{where}: bad sha256 {sha!r}")
    _require(str(raw.get("name", "")).endswith(".gguf"), f"{where}: file name must end in .gguf")
    return FileSpec(name=str(raw["name"]), size=raw.get("size"), sha256=sha)


def _parse_wheel(where: str, raw: Mapping[str, Any]) -> WheelSpec:
    _require(bool(_SHA256.fullmatch(str(raw.get("sha256", "")))), f"{where}: wheel {raw.get('package')} needs sha256")
    return WheelSpec(
        package=str(raw["package"]),
        version=str(raw["version"]),
        sha256=str(raw["sha256"]),
        members=tuple(str(m) for m in raw.get("members", [])),
    )


def _parse_head(name: str, raw: Mapping[str, Any]) -> HeadSpec:
    shipped = raw.get("path") is not None
    hub = all(raw.get(k) for k in ("repo", "filename", "sha256"))
    _require(shipped != hub, f"head {name}: give either path or repo+filename+sha256")
    _require(shipped or bool(_SHA256.fullmatch(str(raw["sha256"]))), f"head {name}: bad sha256")
    return HeadSpec(
        name=name,
        path=raw.get("path"),
        repo=raw.get("repo"),
        filename=raw.get("filename"),
        sha256=raw.get("sha256"),
        revision=str(raw.get("revision", "main")),
    )


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise QwqError(f"model catalog: {message}", ExitCode.BAD_CATALOG)
