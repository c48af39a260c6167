"""A GGUF's chat template rendered as untrusted code: sandboxed Jinja, bounded in steps, time and output size."""

from __future__ import annotations

import functools
import json
import operator
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from types import FrameType
from typing import Any, ClassVar

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_STEPS = 500_000  # Python lines the rendering may run (a real template needs a few thousand per turn)
MAX_SECONDS = 3.0
MAX_OUTPUT = 4 * 1024 * 1024  # characters of rendered prompt, and of any string a template computes with * or **


# Used when a GGUF carries no chat template (and for `--chat-template chatml`): ChatML, as Qwen models use.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_TEMPLATE_BYTES = 1 << 20  # a chat template file given with --chat-template (real ones are a few KiB)


class TemplateError(Exception):
    """The template cannot be compiled, fails, or passes a bound; the message says which."""


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """Pass-through for Hugging Face's `{% generation %}` tag (as llama-cpp-python and Transformers do)."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


_WIDE_FORMAT = re.compile(r"\d{7,}")  # a width or precision of a million or more in a format string


def _check_arguments(values: Sequence[Any], formats: bool = False) -> None:
    """Refuse a size argument over MAX_OUTPUT (`'x'|center(10**9)`), or a format string asking for one."""
    for value in values:
        if isinstance(value, int) and abs(value) > MAX_OUTPUT:
            raise TemplateError(f"a call with a size over {MAX_OUTPUT:,}")
        if formats and isinstance(value, str) and _WIDE_FORMAT.search(value):
            raise TemplateError("a format string with a width over a million")


def _bounded_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)  # keeps jinja's pass_context/pass_environment marks
    def checked(*args: Any, **kwargs: Any) -> Any:
        _check_arguments((*args, *kwargs.values()), formats=function.__name__.startswith("do_format"))
        return function(*args, **kwargs)

    return checked


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox of Transformers' chat templates, with operators, calls and filters unable to build huge values."""

    intercepted_binops = frozenset(["*", "**", "%"])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filters = {name: _bounded_filter(f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "%":
            if isinstance(left, str):
                _check_arguments((left, *(right if isinstance(right, tuple) else (right,))), formats=True)
            return operator.mod(left, right)
        if operator_name == "**":
            big = isinstance(left, int) and isinstance(right, int) and left.bit_length() * abs(right) > 1 << 20
            if big or (isinstance(right, (int, float)) and abs(right) > 1 << 20):
                raise TemplateError("a power of over a million bits")
            return operator.pow(left, right)
        if isinstance(left, (str, list, tuple)) or isinstance(right, (str, list, tuple)):
            sequence, count = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
            if isinstance(count, int) and len(sequence) * count > MAX_OUTPUT:
                raise TemplateError(f"a value of more than {MAX_OUTPUT:,} items")
        return operator.mul(left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Every call a template makes (methods, globals): no size argument above MAX_OUTPUT (`'x'.center(10**9)`)."""
        method = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
        text = getattr(method, "__self__", None)
        formats = isinstance(text, str) and getattr(method, "__name__", "") in ("format", "format_map")
        _check_arguments((*args, *kwargs.values(), *((text,) if formats else ())), formats=formats)
        return super().call(context, obj, *args, **kwargs)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise TemplateError(f"it raised: {message}")


class _Budget:
    """A trace function that stops the rendering thread after MAX_STEPS lines or MAX_SECONDS."""

    def __init__(self) -> None:
        self.steps, self.deadline = 0, time.monotonic() + MAX_SECONDS

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
        self.steps += 1
        if self.steps > MAX_STEPS or (self.steps % 1024 == 0 and time.monotonic() > self.deadline):
            raise TemplateError(f"rendering passed its bound ({MAX_STEPS:,} steps or {MAX_SECONDS:g} s)")
        return self


class ChatTemplate:
    """A compiled chat template; `render` gives the prompt or raises TemplateError, never runs unbounded."""

    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        environment = _BoundedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
            extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols],
        )
        environment.filters["tojson"] = _bounded_filter(_tojson)
        self.bos_token, self.eos_token = bos_token, eos_token
        try:
            self._template = environment.from_string(source)
        except (jinja2.TemplateError, RecursionError, MemoryError, ValueError) as exc:
            raise TemplateError(f"{type(exc).__name__}: {exc}") from None

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
        chunks: list[str] = []
        size = 0
        budget, previous = _Budget(), sys.gettrace()
        sys.settrace(budget)
        try:
            for chunk in self._template.generate(
                messages=list(messages), bos_token=self.bos_token, eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt, raise_exception=_raise_exception,
                strftime_now=lambda f: datetime.now().strftime(f), tools=None, functions=None,
            ):
                size += len(chunk)
                if size > MAX_OUTPUT:
                    raise TemplateError(f"it rendered more than {MAX_OUTPUT:,} characters")
                chunks.append(chunk)
        except TemplateError:
            raise
        except (jinja2.TemplateError, RecursionError, MemoryError, ArithmeticError, TypeError, ValueError,
                LookupError, AttributeError) as exc:
            raise TemplateError(f"{type(exc).__name__}: {exc}") from None
        finally:
            sys.settrace(previous)
        return "".join(chunks)


# llama-cpp-python compiles every chat template of a GGUF as it opens the file, in a sandbox that intercepts no
# operator: Jinja folds constant expressions while compiling, so `{{ (7 ** 100000) ** 1000 }}` or
# `{{ 'x' | center(10 ** 9) }}` never ends (or fills memory) before anything can be rendered. A template with such an
# expression is compiled first in a child process bounded in time and memory; one that fails or passes the bound is
# refused before llama.cpp sees it.
FOREIGN_COMPILE_SECONDS = 20.0
FOREIGN_COMPILE_BYTES = 1 << 30
_FOLDED_OPERATORS = (jinja2.nodes.Pow, jinja2.nodes.Mul, jinja2.nodes.Mod, jinja2.nodes.FloorDiv, jinja2.nodes.Filter,
                     jinja2.nodes.Test)
_COMPILE_AS_LLAMA_CPP = """\
import json, sys, jinja2, jinja2.ext, jinja2.sandbox
class Generation(jinja2.ext.Extension):
    tags = {"generation"}
    def parse(self, parser):
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)
env = jinja2.sandbox.ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                                   extensions=[Generation, jinja2.ext.loopcontrols])
for source in json.load(sys.stdin):
    env.from_string(source)
"""


def _folds_a_constant(source: str) -> bool:
    """Whether Jinja's compiler would compute an operator or filter on constants only (no variable in it)."""
    environment = jinja2.Environment(extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols])
    try:
        tree = environment.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"TemplateSyntaxError: {exc}") from None
    except RecursionError:
        raise TemplateError("RecursionError: expressions nested too deeply") from None
    return any(not any(True for _ in node.find_all(jinja2.nodes.Name)) for node in tree.find_all(_FOLDED_OPERATORS))


def check_llama_cpp_compiles(sources: Sequence[str]) -> None:
    """TemplateError unless llama-cpp-python can compile these chat templates in bounded time and memory."""
    risky = [source for source in sources if _folds_a_constant(source)]
    if not risky:
        return
    import resource
    import subprocess

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (FOREIGN_COMPILE_BYTES, FOREIGN_COMPILE_BYTES))

    try:
        child = subprocess.run([sys.executable, "-c", _COMPILE_AS_LLAMA_CPP], input=json.dumps(risky), text=True,
                               capture_output=True, timeout=FOREIGN_COMPILE_SECONDS, check=False,
                               preexec_fn=limit)  # noqa: PLW1509 - one setrlimit between fork and exec
    except subprocess.TimeoutExpired:
        raise TemplateError(f"compiling it passed {FOREIGN_COMPILE_SECONDS:g} s (a constant expression too large "
                            "to compute)") from None
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["it failed"])[-1]
        raise TemplateError(f"compiling it failed: {last[:200]}")
