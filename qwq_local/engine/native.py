"""The one owner of a llama.cpp context and its batch beside a loaded model (as llama-cpp-python's _internals)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp
import numpy as np

from qwq_local.engine.model import GGML_TYPES, LoadedModel, quiet_stderr
from qwq_local.errors import OutOfMemoryError


@dataclass(frozen=True)
class ContextSpec:
    """A context to create on a loaded model: size, batch, sequences, hidden states, threads, YaRN."""

    n_ctx: int
    n_batch: int = 512  # also the micro-batch
    batch_tokens: int = 512  # room of the llama_batch handed to decode
    n_seq_max: int = 1  # more than one: one unified KV cache shared by the sequences
    embeddings: bool = False  # hidden states of every token (no pooling)
    n_threads: int | None = None  # None: llama.cpp's default
    yarn: bool = False  # extend the context as the model was loaded (its RopePlan)
    quiet: bool = False  # silence llama.cpp's set-up log unless the model was loaded verbose
    tap_layer: int | None = None  # keep the output of this layer for every token of each decode (LayerTap)


class _GGMLTensor(ctypes.Structure):
    """The head of ggml.h's `struct ggml_tensor` (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10,
    GGML_MAX_NAME 64), as far as the eval callback reads it: type, shape and name."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]


_GGML_F32 = 0


def _tensor_get() -> "ctypes._CFuncPtr":
    """ggml_backend_tensor_get from the ggml that llama-cpp-python loaded (its `_ggml` module finds the library)."""
    from llama_cpp._ggml import libggml

    get = libggml.ggml_backend_tensor_get
    get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    get.restype = None
    return get


class LayerTap:
    """A middle layer's output for every token of the latest decode, through llama.cpp's eval callback (the
    graph node `l_out-L`, the residual stream after block L), each row RMS-normalised as the next block reads it
    (the raw stream carries a few huge dimensions). `rows[i]` is batch row i while a decode is one micro-batch
    (n_ubatch = n_batch, one unified KV cache: llama.cpp keeps the batch's order)."""

    def __init__(self, layer: int) -> None:
        self.name = f"l_out-{layer}".encode()
        self.rows: np.ndarray | None = None
        self.error: str | None = None  # why the latest decode left no rows (raised by the reader, not in C's callback)
        self._get = _tensor_get()
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)  # kept alive with the tap

    def _on_tensor(self, tensor: int, ask: bool, _user: int) -> bool:
        t = ctypes.cast(tensor, ctypes.POINTER(_GGMLTensor)).contents
        if t.name != self.name:
            return not ask  # ask: not wanted; otherwise carry on computing
        if ask:
            return True
        if t.type != _GGML_F32:
            self.rows, self.error = None, f"layer tap: {self.name.decode()} is ggml type {t.type}, not f32"
            return True
        rows = np.empty((t.ne[1], t.ne[0]), dtype=np.float32)
        self._get(tensor, rows.ctypes.data, 0, rows.nbytes)
        self.rows = rows / np.sqrt(np.mean(rows * rows, axis=1, keepdims=True) + 1e-6)
        return True


class NativeContext:
    """Owns one llama.cpp context and one batch; `close()` (or leaving the `with`) frees both once."""

    def __init__(self, model: LoadedModel, spec: ContextSpec) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = spec.n_ctx
        params.n_batch = params.n_ubatch = spec.n_batch
        params.n_seq_max = spec.n_seq_max
        if spec.n_seq_max > 1:
            params.kv_unified = True
        if spec.n_threads:
            params.n_threads = params.n_threads_batch = spec.n_threads
        rope = model.options.rope
        if spec.yarn and rope is not None and rope.yarn:
            params.rope_scaling_type = llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN
            params.rope_freq_scale = rope.freq_scale
            params.yarn_orig_ctx = rope.orig_ctx
        cache = model.options.cache  # the KV tree's cache as the model's own context
        params.type_k, params.type_v = GGML_TYPES[cache.type_k], GGML_TYPES[cache.type_v]
        if cache.flash_attn:  # otherwise llama.cpp's own choice (auto), which the hidden-state tests hold to
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if spec.embeddings:
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        self.tap = LayerTap(spec.tap_layer) if spec.tap_layer is not None else None
        if self.tap is not None:
            params.cb_eval = self.tap.callback
        self.batch = None
        with quiet_stderr(spec.quiet and not model.options.verbose):
            self.ctx = llama_cpp.llama_init_from_model(model.model_ptr, params)
        if not self.ctx:
            raise OutOfMemoryError(f"llama.cpp could not create a {spec.n_ctx}-token context")
        self.batch = llama_cpp.llama_batch_init(spec.batch_tokens, 0, 1)

    @property
    def memory(self) -> "llama_cpp.llama_memory_t":
        return llama_cpp.llama_get_memory(self.ctx)

    @property
    def n_ctx(self) -> int:
        return int(llama_cpp.llama_n_ctx(self.ctx))

    def close(self) -> None:
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> "NativeContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
