"""GGUF metadata without loading weights: architecture, sizes, context, RoPE, template, KV-cache cost."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwq_local.catalog.refs import shard_names
from qwq_local.errors import ExitCode, InputFileError, ModelFileError

if TYPE_CHECKING:
    from qwq_local.catalog.gguf_header import TensorEntry

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file says about its model; sizes cover every shard of a split file."""

    path: Path
    architecture: str
    name: str | None
    parameter_count: int
    quant: str
    file_size: int
    shard_count: int
    context_length: int | None
    rope_freq_base: float | None
    rope_scaling_type: str | None
    rope_scaling_factor: float | None
    rope_original_context: int | None
    chat_template: str | None
    n_layer: int
    n_head: int
    n_head_kv: int
    n_embd: int
    head_dim: int
    value_dim: int

    def kv_bytes_per_token(self, type_bytes: float = 2, v_type_bytes: float | None = None) -> int:
        """KV-cache bytes per token: K and V, every layer and KV head (2*n_layer*n_head_kv*head_dim*bytes).

        `v_type_bytes`: V's bytes per element when it differs from K's (a quantised cache).
        """
        v_bytes = type_bytes if v_type_bytes is None else v_type_bytes
        return math.ceil(self.n_layer * self.n_head_kv * (self.head_dim * type_bytes + self.value_dim * v_bytes))


def read_gguf_info(path: Path) -> GGUFInfo:
    """Read a GGUF's metadata (the first shard's, for split files) without touching tensor data."""
    path = Path(path)
    meta, tensors = _read(path)
    arch = _str(meta, "general.architecture")
    if not arch:
        raise ModelFileError(f"{path} has no general.architecture: not a model GGUF", ExitCode.CORRUPT_MODEL)
    shards = _shard_paths(path, int(_num(meta, "split.count") or 1))
    for shard in shards[1:]:
        tensors += _read(shard)[1]
    n_embd = int(_num(meta, f"{arch}.embedding_length") or 0)
    n_head = int(_num(meta, f"{arch}.attention.head_count") or 0)
    n_head_kv = int(_num(meta, f"{arch}.attention.head_count_kv") or n_head)
    head_dim = int(_num(meta, f"{arch}.attention.key_length") or (n_embd // n_head if n_head else 0))
    context = _num(meta, f"{arch}.context_length")
    original = _num(meta, f"{arch}.rope.scaling.original_context_length")
    return GGUFInfo(
        path=path,
        architecture=arch,
        name=_str(meta, "general.name"),
        parameter_count=sum(t.n_elements for t in tensors),
        quant=_quant(meta, tensors),
        file_size=sum(s.stat().st_size for s in shards),
        shard_count=len(shards),
        context_length=int(context) if context is not None else None,
        rope_freq_base=_num(meta, f"{arch}.rope.freq_base"),
        rope_scaling_type=_str(meta, f"{arch}.rope.scaling.type"),
        rope_scaling_factor=_num(meta, f"{arch}.rope.scaling.factor"),
        rope_original_context=int(original) if original is not None else None,
        chat_template=_str(meta, "tokenizer.chat_template"),
        n_layer=int(_num(meta, f"{arch}.block_count") or 0),
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_embd=n_embd,
        head_dim=head_dim,
        value_dim=int(_num(meta, f"{arch}.attention.value_length") or head_dim),
    )


def _read(path: Path) -> tuple[dict[str, Any], list[TensorEntry]]:
    """Parse one GGUF file's header, mapping every failure to a one-line error."""
    if path.is_dir():
        raise InputFileError(f"{path} is a directory, not a .gguf file", ExitCode.IS_A_DIRECTORY)
    if not path.is_file():
        raise InputFileError(f"model file not found: {path}", ExitCode.FILE_NOT_FOUND)
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (bad magic {magic!r})", ExitCode.NOT_GGUF)
    from qwq_local.catalog.gguf_header import HeaderError, read_header

    try:
        header = read_header(path)
    except HeaderError as exc:
        raise ModelFileError(f"{path} is truncated or corrupt ({exc})") from None
    size = path.stat().st_size
    if any(t.offset + t.n_bytes > size for t in header.tensors):
        raise ModelFileError(f"{path} is truncated: tensor data runs past the end of the file")
    return header.metadata, header.tensors


def _shard_paths(path: Path, count: int) -> list[Path]:
    names = shard_names(path.name)
    if count <= 1 or len(names) != count:
        return [path]
    paths = [path.with_name(name) for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InputFileError(f"split model {path.name} is missing shard(s): {', '.join(missing)}")
    return paths


def _quant(meta: dict[str, Any], tensors: list[TensorEntry]) -> str:
    """general.file_type's name (e.g. Q4_K_M), else the tensor type holding the most bytes."""
    import gguf

    file_type = _num(meta, "general.file_type")
    if file_type is not None:
        try:
            name = gguf.LlamaFileType(int(file_type)).name
            if name != "GUESSED":
                return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    weights: Counter[str] = Counter()
    for t in tensors:
        weights[t.ggml_type.name] += t.n_bytes
    return weights.most_common(1)[0][0] if weights else "unknown"


def _num(meta: dict[str, Any], key: str) -> Any:
    """A numeric value (the largest, for per-layer arrays), or None."""
    value = meta.get(key)
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, (int, float))]
        return max(numbers) if numbers else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    return value if isinstance(value, str) else None
