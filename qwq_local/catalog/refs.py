"""What a MODEL argument names: a catalog entry, a local .gguf path, or a hub file `hf:REPO/FILE`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qwq_local.catalog.spec import Catalog, ModelSpec, load_catalog
from qwq_local.errors import ExitCode, QwqError, UsageError

HF_PREFIX = "hf:"
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # the hub's own rule for owner and repo names
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class CatalogRef:
    """A catalog model at one quant."""

    spec: ModelSpec

    def local_paths(self, models_dir: Path) -> list[Path]:
        return self.spec.local_paths(models_dir)


@dataclass(frozen=True)
class PathRef:
    """A .gguf file the user points at directly."""

    path: Path


@dataclass(frozen=True)
class HubRef:
    """An arbitrary hub file (all shards when it is a split GGUF), stored under models_dir/hf/REPO/."""

    repo: str
    filenames: tuple[str, ...]
    revision: str = "main"

    @property
    def name(self) -> str:
        at = "" if self.revision == "main" else f"@{self.revision}"
        return f"{HF_PREFIX}{self.repo}{at}/{self.filenames[0]}"

    def local_paths(self, models_dir: Path) -> list[Path]:
        return [models_dir / "hf" / self.repo / name for name in self.filenames]


ModelRef = CatalogRef | PathRef | HubRef


def parse_ref(model: str, catalog: Catalog | None = None) -> ModelRef:
    """Classify MODEL: `hf:` prefix, then anything path-like, else a catalog name (may raise UnknownModelError)."""
    text = model.strip()
    if not text:
        raise UsageError("empty model name")
    if text.startswith(HF_PREFIX):
        return parse_hub_ref(text[len(HF_PREFIX) :])
    if looks_like_path(text):
        return PathRef(Path(text).expanduser())
    return CatalogRef((catalog or load_catalog()).lookup(text))


def looks_like_path(text: str) -> bool:
    """Catalog names never contain a path separator nor end in .gguf."""
    return "/" in text or "\\" in text or text.lower().endswith(".gguf") or text.startswith(("~", "."))


def parse_hub_ref(text: str) -> HubRef:
    """`OWNER/NAME[@REV]/PATH.gguf`; a shard name stands for every shard of its split GGUF."""
    if text.startswith(("/", "\\")):
        raise QwqError(f"bad hub name hf:{text}: an absolute path, not OWNER/REPO/FILE.gguf", ExitCode.BAD_HUB_NAME)
    parts = text.rstrip("/").split("/")
    if len(parts) < 3 or not parts[-1].lower().endswith(".gguf"):
        raise UsageError(f"expected hf:OWNER/REPO/FILE.gguf, got hf:{text}")
    # Checked before anything touches the disk: these parts become folders under models_dir/hf/.
    bad = [part for part in parts if part in ("", ".", "..") or "\\" in part or "\0" in part]
    name, _, revision = parts[1].partition("@")
    if bad or not (_REPO_PART.fullmatch(parts[0]) and _REPO_PART.fullmatch(name)) or (
            revision and not _REPO_PART.fullmatch(revision)):
        raise QwqError(f"bad hub name hf:{text}: OWNER, REPO and each folder must be plain names "
                       "(no '..', '.', empty parts or backslashes)", ExitCode.BAD_HUB_NAME)
    filename = "/".join(parts[2:])
    return HubRef(repo=f"{parts[0]}/{name}", filenames=shard_names(filename), revision=revision or "main")


def shard_names(filename: str) -> tuple[str, ...]:
    """All shard names of a split GGUF (`x-00001-of-00003.gguf`), or just the file itself."""
    directory, _, base = filename.rpartition("/")
    match = _SHARD.match(base)
    if not match:
        return (filename,)
    prefix = f"{directory}/" if directory else ""
    count = int(match["count"])
    return tuple(f"{prefix}{match['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1))
