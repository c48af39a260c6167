"""The one owner of a llama.cpp context and its batch beside a loaded model (as llama-cpp-python's _internals)."""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp

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
