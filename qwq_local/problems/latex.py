"""A small LaTeX -> sympy reader for MATH answers (sympy's own needs antlr4, which we don't depend on)."""

from __future__ import annotations

import re
from typing import Any


class MathParseError(ValueError):
    """LaTeX this reader does not understand."""


_TOKEN = re.compile(r"(\d+(?:\.\d+)?|\.\d+)|(\\[A-Za-z]+|\\[{}|])|([A-Za-z])|([-+*/^(){}\[\]!|])|(\s+)")
_FUNCTIONS = {
    "sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc",
    "arcsin": "asin", "arccos": "acos", "arctan": "atan", "ln": "log", "log": "log", "exp": "exp",
}
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "phi", "psi", "omega",
    "rho", "sigma", "tau",
}
_TIMES = {"*", "\\cdot", "\\times"}
_DIVIDE = {"/", "\\div"}
_IGNORED = {"\\left", "\\right", "\\displaystyle"}
_KNOWN = {
    "frac", "dfrac", "tfrac", "sqrt", "pi", "infty", "cdot", "times", "div", "left", "right", "displaystyle",
    *_GREEK, *_FUNCTIONS,
}
_MAX_EXPONENT = 1000  # larger powers (and factorials) are refused instead of computed
_MAX_BITS = 100_000  # nor is a power whose exact value would need more bits


def load_sympy() -> Any:
    """sympy, imported on first use (it takes a second)."""
    import sympy  # type: ignore[import-untyped]

    return sympy


def _command(word: str) -> str:
    """The known command `word` starts with: normalization removed the space in `\\pi r` -> `\\pir`."""
    name = word[1:]
    if name in _KNOWN or not name.isalpha():
        return word
    prefixes = [known for known in _KNOWN if name.startswith(known)]
    return "\\" + max(prefixes, key=len) if prefixes else word


def _tokens(text: str) -> list[str]:
    found, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise MathParseError(f"unexpected {text[at]!r}")
        token = match.group(0)
        at = match.end()
        if match.lastindex == 2:
            token = _command(token)
            at = match.start() + len(token)
        if match.lastindex != 5 and token not in _IGNORED:
            found.append(token)
    return found


class _Reader:
    """Recursive descent over LaTeX tokens: sums, products (also implicit), powers, \\frac, \\sqrt."""

    def __init__(self, text: str) -> None:
        self.sympy = load_sympy()
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise MathParseError(f"expected {expected or 'more'}, got {token!r}")
        self.at += 1
        return token

    def whole(self) -> Any:
        value = self.expression()
        if self.peek() is not None:
            raise MathParseError(f"unexpected {self.peek()!r}")
        return value

    def expression(self) -> Any:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Any:
        value = self.factor()
        while True:
            token = self.peek()
            if token in _TIMES:
                self.take()
                value = value * self.factor()
            elif token in _DIVIDE:
                self.take()
                value = value / self.factor()
            elif token is not None and self.starts_atom(token):
                value = value * self.power()
            else:
                return value

    def starts_atom(self, token: str) -> bool:
        if token in ("(", "[", "{") or token[0].isdigit() or token[0] == "." or token.isalpha():
            return True
        return token.startswith("\\") and token not in _TIMES | _DIVIDE | {"\\}", "\\|"}

    def factor(self) -> Any:
        if self.peek() in ("-", "+"):
            return -self.factor() if self.take() == "-" else self.factor()
        return self.power()

    def power(self) -> Any:
        base = self.atom()
        while self.peek() == "!":
            self.take()
            if not (base.is_Integer and 0 <= base <= _MAX_EXPONENT):
                raise MathParseError("factorial of a large or non-integer value")
            base = self.sympy.factorial(base)
        if self.peek() != "^":
            return base
        self.take()
        exponent = self.factor() if self.peek() in ("-", "+") else self.argument()
        if exponent.is_Number and (abs(exponent) > _MAX_EXPONENT or _bits(base) * abs(exponent) > _MAX_BITS):
            raise MathParseError("power too large to compute")
        return base**exponent

    def argument(self) -> Any:
        """A command's argument: {braced}, a single digit, or one atom (\\frac12, x^2)."""
        token = self.peek()
        if token == "{":
            self.take()
            value = self.expression()
            self.take("}")
            return value
        if token is not None and token[0].isdigit() and len(token) > 1:
            self.tokens[self.at] = token[1:]
            return self.sympy.Integer(int(token[0]))
        return self.atom()

    def atom(self) -> Any:
        sympy = self.sympy
        token = self.take()
        closers = {"(": ")", "[": "]", "{": "}", "\\|": "\\|", "|": "|"}
        if token in closers:
            value = self.expression()
            self.take(closers[token])
            return sympy.Abs(value) if "|" in token else value
        if token[0].isdigit() or token[0] == ".":
            return sympy.Rational(token)
        if token.isalpha():
            return sympy.I if token == "i" else sympy.Symbol(token)
        name = token[1:]
        if name in ("frac", "dfrac", "tfrac"):
            numerator = self.argument()
            return numerator / self.argument()
        if name == "sqrt":
            if self.peek() == "[":
                self.take()
                degree = self.expression()
                self.take("]")
                return sympy.root(self.argument(), degree)
            return sympy.sqrt(self.argument())
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in _GREEK:
            return sympy.Symbol(name)
        if name in _FUNCTIONS:
            function = getattr(sympy, _FUNCTIONS[name])
            exponent = None
            if self.peek() == "^":
                self.take()
                exponent = self.argument()
            value = function(self.power())
            return value**exponent if exponent is not None else value
        raise MathParseError(f"unknown command {token}")


def _bits(value: Any) -> int:
    """Bits of a rational value's numerator or denominator (0 for anything else)."""
    if not value.is_Rational:
        return 0
    return max(abs(int(value.p)).bit_length(), int(value.q).bit_length())


def parse_latex(text: str) -> Any:
    """A sympy expression for a LaTeX math answer; MathParseError where this reader can't follow it."""
    try:
        return _Reader(text).whole()
    except (TypeError, ValueError, ZeroDivisionError, RecursionError, AttributeError) as error:
        if isinstance(error, MathParseError):
            raise
        raise MathParseError(str(error)) from error
