"""A served model's chat template and tokenizer as the server itself gives them, for a model whose GGUF is not here.

llama-server says its template in `/props` (`chat_template`, `bos_token`, `eos_token`); it is rendered here by the
bounded renderer (engine/template.py), as a GGUF's is. Tokens are counted by the server's own tokenizer endpoint
(llama-server and vLLM `/tokenize`, llama-cpp-python's `/extras/tokenize`).
"""

from __future__ import annotations

from typing import Any, Sequence

from qwq_local.dialog.messages import Message
from qwq_local.engine.remote_client import CompletionServer
from qwq_local.engine.template import ChatTemplate, TemplateError
from qwq_local.errors import EngineReplyError, QwqError

MAX_CACHED = 4096  # texts whose token counts are kept (a search counts the same step texts again)


class Tokenizer:
    """Counts tokens with one of the server's tokenizer endpoints: the first that answers is kept."""

    # (path, body for a text) as each server names them; special tokens are parsed, no BOS is added
    ENDPOINTS = (
        ("/tokenize", lambda text, model: {"content": text, "add_special": False, "parse_special": True}),
        ("/tokenize", lambda text, model: {"prompt": text, "add_special_tokens": False,
                                           **({"model": model} if model else {})}),
        ("/extras/tokenize", lambda text, model: {"input": text, **({"model": model} if model else {})}),
    )

    def __init__(self, server: CompletionServer, model: str | None) -> None:
        self.server = server
        self.model = model
        self._endpoint: Any = None
        self._counts: dict[str, int] = {}

    def tokens(self, text: str) -> list[Any]:
        """The token list the server gives for `text` (EngineReplyError when it has no tokenizer endpoint)."""
        if self._endpoint is not None:
            return self._ask(self._endpoint, text)
        for endpoint in self.ENDPOINTS:
            try:
                tokens = self._ask(endpoint, text)
            except QwqError:
                continue
            self._endpoint = endpoint
            return tokens
        raise EngineReplyError(f"the engine at {self.server.url} has no tokenizer endpoint (/tokenize, "
                               "/extras/tokenize) to count the model's tokens with")

    def _ask(self, endpoint: Any, text: str) -> list[Any]:
        path, body = endpoint
        data = self.server.request("POST", path, body(text, self.model), retry=self._endpoint is not None)
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            raise EngineReplyError(f"the engine at {self.server.url} answered {path} without a token list")
        return tokens

    def count(self, text: str) -> int:
        if text not in self._counts:
            if len(self._counts) >= MAX_CACHED:
                self._counts.clear()
            self._counts[text] = len(self.tokens(text))
        return self._counts[text]


class ServerFormat:
    """A PromptFormat from the server: its `/props` chat template rendered here, its tokenizer over HTTP."""

    def __init__(self, template: ChatTemplate, tokenizer: Tokenizer, *, bos_text: str, added_bos: str,
                 source: str, eos_text: str = "") -> None:
        self._template = template
        self._tokenizer = tokenizer
        self.bos_text = bos_text
        self.eos_text = eos_text
        self.added_bos = added_bos
        self.source = source  # where the template came from, for messages
        self._pieces: dict[int, str] = {}

    @classmethod
    def discover(cls, server: CompletionServer, model: str | None, override: str | None = None) -> ServerFormat | None:
        """The server's template (or `override`, given with --chat-template) and tokenizer, or None when it says no
        template (llama-server's /props)."""
        try:
            props = server.request("GET", "/props", retry=False)
        except QwqError:
            if override is None:
                return None
            props = {}
        source = override or (props.get("chat_template") if isinstance(props, dict) else None)
        if not isinstance(source, str) or not source.strip():
            return None
        bos, eos = (str(props.get(k) or "") for k in ("bos_token", "eos_token"))
        try:
            template = ChatTemplate(source, bos_token=bos, eos_token=eos)
        except TemplateError as exc:
            raise EngineReplyError(f"the chat template the engine at {server.url} gives (/props) does not "
                                   f"compile ({exc})") from None
        tokenizer = Tokenizer(server, model)
        plain = tokenizer.tokens("a")
        try:  # the server adds BOS by itself when "a" tokenized with its special tokens is one token longer
            special = server.request("POST", "/tokenize", {"content": "a", "add_special": True}, retry=False)
        except QwqError:
            special = None
        tokens = special.get("tokens") if isinstance(special, dict) else None
        added_bos = bos if bos and isinstance(tokens, list) and len(tokens) == len(plain) + 1 else ""
        return cls(template, tokenizer, bos_text=bos, added_bos=added_bos, eos_text=eos,
                   source="--chat-template" if override else f"{server.url}/props")

    def render_chat(self, messages: Sequence[Message]) -> str:
        """The server's chat template, ending with the assistant's generation prompt."""
        try:
            return self._template.render([{"role": m.role, "content": m.content} for m in messages])
        except TemplateError as exc:
            raise EngineReplyError(f"the chat template from {self.source} failed ({exc})") from None

    def count_tokens(self, text: str) -> int:
        return self._tokenizer.count(text)

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends a generation, as the server spells it (llama-server's /detokenize writes special
        tokens out): its EOS, or another control token such as <|endoftext|> or <end_of_turn>. A token that cannot
        be spelled (no /detokenize) is not taken for one."""
        piece = self._pieces.get(token)
        if piece is None:
            try:
                data = self._tokenizer.server.request("POST", "/detokenize", {"tokens": [token]}, retry=False)
            except QwqError:
                data = None
            piece = data.get("content") if isinstance(data, dict) else None
            piece = piece if isinstance(piece, str) else ""
            if len(self._pieces) < MAX_CACHED:
                self._pieces[token] = piece
        return bool(piece) and (piece == self.eos_text or (piece.startswith("<") and piece.endswith(">")
                                                           and "\n" not in piece and len(piece) > 2))

    def close(self) -> None:
        """Nothing to free: the server owns the tokenizer."""
