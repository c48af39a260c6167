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
# Bounds far above any real model; past them a GGUF's numbers are corrupt or hostile, not large.
MAX_LAYERS = 4096
MAX_WIDTH = 1 << 20  # embedding width, heads, head dimensions
MAX_CONTEXT = (1 << 31) - 1  # llama.cpp keeps n_ctx_train in an int32
MAX_SHARDS = 9999
MAX_FLOAT = 1e15  # RoPE base and scaling factor


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
    count = _Counts(path, meta)
    shards = _shard_paths(path, count.int("split.count", 1, MAX_SHARDS) or 1)
    for shard in shards[1:]:
        tensors += _read(shard)[1]
    n_embd = count.int(f"{arch}.embedding_length", 1, MAX_WIDTH) or 0
    n_head = count.int(f"{arch}.attention.head_count", 0, MAX_WIDTH) or 0
    n_head_kv = count.int(f"{arch}.attention.head_count_kv", 0, MAX_WIDTH)
    n_head_kv = n_head if n_head_kv is None else n_head_kv
    head_dim = count.int(f"{arch}.attention.key_length", 1, MAX_WIDTH) or (n_embd // n_head if n_head else 0)
    value_dim = count.int(f"{arch}.attention.value_length", 1, MAX_WIDTH) or head_dim
    n_layer = count.int(f"{arch}.block_count", 1, MAX_LAYERS) or 0
    parameters = sum(t.n_elements for t in tensors)
    # Every layer has at least a norm of n_embd weights and K and V projections as wide as its KV cache.
    if n_layer * max(n_embd, n_head_kv * (head_dim + value_dim)) > parameters:
        raise ModelFileError(
            f"{path} is corrupt: {n_layer} layers of width {n_embd} (KV {n_head_kv} x {head_dim}+{value_dim}) "
            f"cannot fit in {parameters:,} weights"
        )
    return GGUFInfo(
        path=path,
        architecture=arch,
        name=_str(meta, "general.name"),
        parameter_count=parameters,
        quant=_quant(meta, tensors),
        file_size=sum(s.stat().st_size for s in shards),
        shard_count=len(shards),
        context_length=count.int(f"{arch}.context_length", 1, MAX_CONTEXT),
        rope_freq_base=count.float(f"{arch}.rope.freq_base"),
        rope_scaling_type=_str(meta, f"{arch}.rope.scaling.type"),
        rope_scaling_factor=count.float(f"{arch}.rope.scaling.factor"),
        rope_original_context=count.int(f"{arch}.rope.scaling.original_context_length", 1, MAX_CONTEXT),
        chat_template=_str(meta, "tokenizer.chat_template"),
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_embd=n_embd,
        head_dim=head_dim,
        value_dim=value_dim,
    )


class _Counts:
    """Numbers read from a GGUF's metadata, each range-checked before use (a model file is untrusted input)."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = path, meta

    def _bad(self, key: str, value: Any, wanted: str) -> ModelFileError:
        return ModelFileError(f"{self.path} is corrupt: {key} = {value!r} ({wanted})", ExitCode.CORRUPT_MODEL)

    def int(self, key: str, low: int, high: int) -> int | None:
        """The value of `key` as a whole number in [low, high], None if absent; exit 7 otherwise."""
        value = _num(self.meta, key)
        if value is None:
            return None
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise self._bad(key, value, "not a whole number")
        if not low <= value <= high:
            raise self._bad(key, value, f"must be {low} to {high:,}")
        return int(value)

    def float(self, key: str) -> float | None:
        """The value of `key` as a finite number from 0, None if absent; exit 7 otherwise."""
        value = _num(self.meta, key)
        if value is None:
            return None
        if not (math.isfinite(value) and 0 <= value < MAX_FLOAT):
            raise self._bad(key, value, "must be a finite number from 0")
        return float(value)


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
        raise InputFileError(f"split model {path.name} is missing shard(s): {', '.join(missing)}",
                             ExitCode.FILE_NOT_FOUND)
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
