"""A fast GGUF header parser (key/values and tensor infos) that steps over the big token arrays."""

# gguf's GGUFReader decodes every tokenizer string into numpy views: about 20 s for a 151k-token Qwen vocabulary.
# Arrays longer than KEEP_ARRAY items are skipped here, so a header reads in well under a second. The format's
# constants (value types, tensor types and their block sizes) still come from the gguf package.

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

KEEP_ARRAY = 256
MAX_ARRAY_DEPTH = 8  # arrays of arrays nested deeper than this are refused, not recursed into
MAX_DIMS = 8  # ggml has 4; a tensor with more is corrupt
_SCALARS = {
    gguf.GGUFValueType.UINT8: "B",
    gguf.GGUFValueType.INT8: "b",
    gguf.GGUFValueType.UINT16: "H",
    gguf.GGUFValueType.INT16: "h",
    gguf.GGUFValueType.UINT32: "I",
    gguf.GGUFValueType.INT32: "i",
    gguf.GGUFValueType.FLOAT32: "f",
    gguf.GGUFValueType.BOOL: "?",
    gguf.GGUFValueType.UINT64: "Q",
    gguf.GGUFValueType.INT64: "q",
    gguf.GGUFValueType.FLOAT64: "d",
}


class HeaderError(ValueError):
    """The bytes do not form a valid GGUF header (truncated or corrupt)."""


@dataclass(frozen=True)
class SkippedArray:
    """A metadata array too long to keep (e.g. the token list): only its type and length."""

    item_type: int
    length: int


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's info; `offset` is absolute in the file."""

    name: str
    shape: tuple[int, ...]
    ggml_type: gguf.GGMLQuantizationType
    offset: int
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    """Everything before the tensor data."""

    version: int
    metadata: dict[str, Any]
    tensors: list[TensorEntry]
    data_offset: int


def read_header(path: Path) -> GGUFHeader:
    """Parse a GGUF file's header; HeaderError on anything malformed or cut short."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _Parser(buf).header()
        except (struct.error, IndexError, OverflowError, UnicodeDecodeError, ValueError, KeyError) as exc:
            if isinstance(exc, HeaderError):
                raise
            raise HeaderError(f"{type(exc).__name__}: {exc}") from None


class _Parser:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos, self.order = buf, 0, "<"

    def header(self) -> GGUFHeader:
        if self.buf[:4] != b"GGUF":
            raise HeaderError("bad magic")
        self.pos = 4
        version = self.unpack("I")
        if version & 0xFFFF == 0:  # written on a big-endian machine
            self.order, self.pos = ">", 4
            version = self.unpack("I")
        if version not in (2, 3):
            raise HeaderError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = self.unpack("Q"), self.unpack("Q")
        # Each key/value takes at least 13 bytes and each tensor info 24: a count the file cannot hold is a lie.
        if n_kv > self.left() // 13 or n_tensors > self.left() // 24:
            raise HeaderError(f"{n_kv} keys and {n_tensors} tensors cannot fit in the file")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string()
            metadata[key] = self.value(self.unpack("I"))
        infos = [self.tensor_info() for _ in range(n_tensors)]
        alignment = int(metadata.get("general.alignment", 32))
        if alignment <= 0 or alignment & (alignment - 1):
            raise HeaderError(f"invalid alignment {alignment}")
        data_offset = -(-self.pos // alignment) * alignment
        tensors = [self.tensor(name, dims, kind, offset, data_offset) for name, dims, kind, offset in infos]
        return GGUFHeader(version=version, metadata=metadata, tensors=tensors, data_offset=data_offset)

    def unpack(self, code: str) -> Any:
        fmt = self.order + code
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def left(self) -> int:
        """Bytes after the read position."""
        return len(self.buf) - self.pos

    def string(self) -> str:
        length = self.unpack("Q")
        end = self.pos + length
        if end > len(self.buf):
            raise HeaderError("string runs past the end of the file")
        text = self.buf[self.pos : end].decode("utf-8")
        self.pos = end
        return text

    def value(self, kind: int, depth: int = 0) -> Any:
        kind = gguf.GGUFValueType(kind)
        if kind == gguf.GGUFValueType.STRING:
            return self.string()
        if kind == gguf.GGUFValueType.ARRAY:
            return self.array(depth + 1)
        return self.unpack(_SCALARS[kind])

    def array(self, depth: int) -> Any:
        if depth > MAX_ARRAY_DEPTH:
            raise HeaderError(f"metadata arrays nested deeper than {MAX_ARRAY_DEPTH}")
        item_type, length = gguf.GGUFValueType(self.unpack("I")), self.unpack("Q")
        smallest = struct.calcsize(_SCALARS[item_type]) if item_type in _SCALARS else (
            8 if item_type == gguf.GGUFValueType.STRING else 12)
        if length > self.left() // smallest:
            raise HeaderError(f"an array of {length} items cannot fit in the file")
        if length <= KEEP_ARRAY:
            return [self.value(item_type, depth) for _ in range(length)]
        if item_type in _SCALARS:
            self.pos += length * struct.calcsize(_SCALARS[item_type])
        elif item_type == gguf.GGUFValueType.STRING:
            for _ in range(length):
                self.pos += 8 + struct.unpack_from(self.order + "Q", self.buf, self.pos)[0]
        else:
            for _ in range(length):
                self.value(item_type, depth)
        if self.pos > len(self.buf):
            raise HeaderError("array runs past the end of the file")
        return SkippedArray(int(item_type), length)

    def tensor_info(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self.string()
        n_dims = self.unpack("I")
        if n_dims > MAX_DIMS:
            raise HeaderError(f"tensor {name!r} has {n_dims} dimensions")
        dims = tuple(self.unpack("Q") for _ in range(n_dims))
        return name, dims, self.unpack("I"), self.unpack("Q")

    def tensor(self, name: str, dims: tuple[int, ...], kind: int, offset: int, data_offset: int) -> TensorEntry:
        ggml_type = gguf.GGMLQuantizationType(kind)
        block_size, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        n_elements = 1
        for dim in dims:
            n_elements *= dim
        return TensorEntry(
            name=name,
            shape=dims,
            ggml_type=ggml_type,
            offset=data_offset + offset,
            n_elements=n_elements,
            n_bytes=n_elements * type_size // block_size,
        )
