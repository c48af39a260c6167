"""A GGUF's tokenizer and chat template without its weights (a vocab-only load), for prompts sent to remote engines."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import llama_cpp

from qwq_local.dialog.messages import Message
from qwq_local.engine.model import quiet_stderr
from qwq_local.engine.template import CHATML, ChatTemplate, TemplateError
from qwq_local.errors import ExitCode, ModelFileError


class GGUFVocab:
    """Owns a vocab-only llama.cpp model: the chat template applied here, tokens counted here; `close()` frees it."""

    def __init__(self, path: Path, chat_template: str | None = None, *, verbose: bool = False) -> None:
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        with quiet_stderr(not verbose):
            model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
        if not model:
            raise ModelFileError(f"{Path(path).name}: llama.cpp could not read its vocabulary", ExitCode.CORRUPT_MODEL)
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.name = Path(path).name
        self.bos_text = self._piece_text(llama_cpp.llama_vocab_bos(self._vocab))
        self.eos_text = self._piece_text(llama_cpp.llama_vocab_eos(self._vocab))
        # the BOS a server's tokenizer puts before a prompt by itself ("" when this vocab adds none)
        self.added_bos = self.bos_text if llama_cpp.llama_vocab_get_add_bos(self._vocab) else ""
        self.chat_template = chat_template or CHATML
        self.path = Path(path)
        try:
            self._template = ChatTemplate(self.chat_template, bos_token=self.bos_text, eos_token=self.eos_text)
        except TemplateError as exc:
            self.close()
            raise ModelFileError(f"{path}: its chat template does not compile ({exc})") from None

    def _piece_text(self, token: int) -> str:
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    def render_chat(self, messages: Sequence[Message]) -> str:
        """The GGUF's own chat template, ending with the assistant's generation prompt."""
        try:
            return self._template.render([{"role": m.role, "content": m.content} for m in messages])
        except TemplateError as exc:
            raise ModelFileError(f"{self.path}: its chat template failed ({exc})") from None

    def tokenize(self, text: str, bos: bool = True) -> list[int]:
        """Tokens of `text` with special tokens parsed; BOS only if the vocab wants it and the text lacks it."""
        if self._model is None:
            raise RuntimeError("GGUFVocab used after close()")
        data = text.encode("utf-8")
        add_bos = bos and not (self.bos_text and text.startswith(self.bos_text))
        room = len(data) + 8
        buf = (llama_cpp.llama_token * room)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, room, add_bos, True)
        if n < 0:
            room = -n
            buf = (llama_cpp.llama_token * room)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, room, add_bos, True)
        return list(buf[:n])

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, bos=False))

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends a generation (EOS, <|im_end|>, ...): how a llama-server reply that ended at EOS is
        told from one that ended at a stop string."""
        if self._model is None:
            raise RuntimeError("GGUFVocab used after close()")
        return 0 <= token < llama_cpp.llama_vocab_n_tokens(self._vocab) and bool(
            llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def close(self) -> None:
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> GGUFVocab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

