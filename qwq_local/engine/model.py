"""Owns a loaded GGUF: the llama.cpp model and its main context, tokenizer and chat template."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import jinja2
import llama_cpp

from qwq_local.engine.plan import KVCache, RopePlan
from qwq_local.engine.template import CHATML, ChatTemplate, TemplateError, check_llama_cpp_compiles
from qwq_local.errors import ExitCode, ModelFileError, OutOfMemoryError

if TYPE_CHECKING:  # pragma: no cover
    from qwq_local.dialog.messages import Message

GGML_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}



@dataclass(frozen=True)
class LoadOptions:
    """How to load: context size, GPU layers (-1 = all), YaRN, threads, seed."""

    n_ctx: int = 4096
    n_gpu_layers: int = 0
    rope: RopePlan | None = None
    n_threads: int | None = None
    n_batch: int = 512
    seed: int = 0xFFFFFFFF
    verbose: bool = False
    cache: KVCache = KVCache()  # KV-cache types and flash attention
    chat_template: str | None = None  # used instead of the GGUF's own (`--chat-template`)


def physical_cores() -> int:
    """Physical CPU cores this process may use (llama.cpp's choice for decode threads; hyperthreads hurt).

    llama-cpp-python's own default, half the logical CPUs, leaves one of two cores idle on a small VM.
    """
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        cores = set()
        block: dict[str, str] = {}
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in [*f, ""]:
                if not line.strip():
                    if "core id" in block:
                        cores.add((block.get("physical id", "0"), block["core id"]))
                    block = {}
                elif ":" in line:
                    key, _, value = line.partition(":")
                    block[key.strip()] = value.strip()
        if cores:
            return max(1, min(len(cores), logical))
    except OSError:
        pass
    return max(1, logical)


@contextlib.contextmanager
def quiet_stderr(enabled: bool) -> Iterator[None]:
    """Silence llama.cpp's C-level stderr chatter while loading unless verbose."""
    if not enabled:
        yield
        return
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            # llama-cpp-python's log callback prints to sys.stderr, llama.cpp to fd 2
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def check_chat_templates(path: Path) -> None:
    """ModelFileError (exit 7) for a chat template in the GGUF that llama-cpp-python could not compile in bounded
    time: it compiles all of them whenever it opens the file (engine/template.check_llama_cpp_compiles)."""
    try:
        _check_templates_once(str(path), *_identity(path))
    except TemplateError as exc:
        raise ModelFileError(f"{path}: its chat template does not compile ({exc})") from None


def _identity(path: Path) -> tuple[int, int]:
    stat = Path(path).stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _check_templates_once(path: str, size: int, mtime_ns: int) -> None:
    """Checked once per file version in a process (a chat reopens its model, a solve counts tokens first)."""
    from qwq_local.catalog.gguf_header import HeaderError, read_header

    try:
        metadata = read_header(Path(path)).metadata
    except (HeaderError, OSError):
        return  # not readable as GGUF here: llama.cpp's own load says what is wrong
    templates = [value for key, value in metadata.items()
                 if (key == "tokenizer.chat_template" or key.startswith("tokenizer.chat_template."))
                 and isinstance(value, str)]
    check_llama_cpp_compiles(templates)


def count_tokens(path: Path, text: str) -> int:
    """Tokens of `text` by the model's own tokenizer, loading its vocabulary only (no weights, no context)."""
    check_chat_templates(path)
    with quiet_stderr(True):
        vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=True, special=True))
    finally:
        vocab.close()


class LoadedModel:
    """A GGUF loaded into llama.cpp, with one chat context (the high-level Llama)."""

    def __init__(self, path: Path, options: LoadOptions = LoadOptions()) -> None:
        self.path = Path(path)
        self._open(options)

    def reopen(self, rope: RopePlan) -> None:
        """Load again with another RoPE plan (llama.cpp reads it only when a context is made); the cache is lost."""
        self.close()
        self._open(replace(self.options, rope=rope))

    def _open(self, options: LoadOptions) -> None:
        self.options = options
        rope = options.rope
        kwargs: dict = dict(type_k=GGML_TYPES[options.cache.type_k], type_v=GGML_TYPES[options.cache.type_v],
                             flash_attn=options.cache.flash_attn)
        if rope is not None and rope.yarn:
            kwargs.update(
                rope_scaling_type=llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
                rope_freq_scale=rope.freq_scale,
                yarn_orig_ctx=rope.orig_ctx,
            )
        check_chat_templates(self.path)
        try:
            with quiet_stderr(not options.verbose):
                self.llama = llama_cpp.Llama(
                    model_path=str(self.path),
                    n_ctx=options.n_ctx,
                    n_batch=options.n_batch,
                    n_gpu_layers=options.n_gpu_layers,
                    n_threads=options.n_threads or physical_cores(),
                    n_threads_batch=options.n_threads or (os.cpu_count() or 1),
                    seed=options.seed,
                    verbose=options.verbose,
                    **kwargs,
                )
        except ValueError as exc:
            if "llama_context" in str(exc) or "llama_batch" in str(exc):  # the weights loaded; memory did not
                raise OutOfMemoryError(f"{self.path.name}: llama.cpp could not allocate a {options.n_ctx}-token "
                                       "context; try a smaller --ctx or fewer --gpu-layers") from exc
            raise ModelFileError(f"{self.path.name}: llama.cpp could not load it ({exc})",
                                 ExitCode.CORRUPT_MODEL) from exc
        except jinja2.TemplateError as exc:  # llama-cpp-python compiles the GGUF's chat template as it loads
            raise ModelFileError(f"{self.path}: its chat template does not compile "
                                 f"({type(exc).__name__}: {exc})") from None
        self.name = self.path.name
        self.n_ctx = self.llama.n_ctx()
        meta = self.llama.metadata
        self._vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self.eos_text = self._piece_text(self.llama.token_eos())
        self.bos_text = self._piece_text(self.llama.token_bos())
        self.chat_template = options.chat_template or meta.get("tokenizer.chat_template") or CHATML
        try:
            self._template = ChatTemplate(self.chat_template, bos_token=self.bos_text, eos_token=self.eos_text)
        except TemplateError as exc:
            self.llama.close()
            raise ModelFileError(f"{self.path}: its chat template does not compile ({exc})") from None
        self._pieces: dict[int, bytes] = {}

    @property
    def model_ptr(self) -> "llama_cpp.llama_model_p":
        """The native model, for contexts of our own (the KV tree)."""
        return self.llama.model

    @property
    def vocab(self) -> "llama_cpp.llama_vocab_p":
        return self._vocab

    @property
    def n_embd(self) -> int:
        return self.llama.n_embd()

    @property
    def n_vocab(self) -> int:
        return self.llama.n_vocab()

    @property
    def n_layer(self) -> int:
        return int(llama_cpp.llama_model_n_layer(self.model_ptr))

    def _piece_text(self, token: int) -> str:
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8")

    def render_chat(self, messages: Sequence["Message"]) -> str:
        """Apply the GGUF's own chat template, ending with the assistant's generation prompt."""
        try:
            return self._template.render([{"role": m.role, "content": m.content} for m in messages])
        except TemplateError as exc:
            raise ModelFileError(f"{self.path}: its chat template failed ({exc})") from None

    def tokenize(self, text: str, bos: bool = True) -> list[int]:
        """Tokens of `text` with special tokens parsed; BOS only if the vocab wants it and text lacks it."""
        add_bos = bos and not (self.bos_text and text.startswith(self.bos_text))
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens give b"")."""
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
            piece = buf.raw[:n]
            self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def context_params(self) -> dict:
        """The live chat context's rope settings, read back from llama.cpp."""
        params = self.llama.context_params
        return {
            "n_ctx": self.llama.n_ctx(),
            "rope_scaling_type": int(params.rope_scaling_type),
            "rope_freq_scale": float(params.rope_freq_scale),
            "yarn_orig_ctx": int(params.yarn_orig_ctx),
        }

    def close(self) -> None:
        self.llama.close()
