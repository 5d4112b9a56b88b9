"""The PromQL lexer: expression text to tokens (Prometheus 2.42's lexical grammar).

Numbers (decimal, hex, ``Inf``/``NaN``), durations (``5m``, ``1h30m``; parsed by the one
duration parser, ``tuner.config.parse_duration_ms``), strings in three quotes with Go's escape
sequences, identifiers, operators and ``#`` comments. Errors name the position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from tuner.errors import QueryError
from tuner.units import parse_duration_ms as config_duration_ms

_DURATION_RE = re.compile(r"(?:\d+(?:ms|y|w|d|h|m|s))+(?![A-Za-z0-9_])")
_NUMBER_RE = re.compile(
    r"0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
)
_IDENT_RE = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
LABEL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = ["==", "!=", "=~", "!~", "<=", ">=", "+", "-", "*", "/", "%", "^", "<", ">", "=",
              "(", ")", "{", "}", "[", "]", ",", ":", "@"]


class TokenKind(StrEnum):
    IDENT = "ident"
    NUMBER = "number"
    DURATION = "duration"
    STRING = "string"
    OP = "op"
    EOF = "eof"


@dataclass(frozen=True)
class Token:
    """One token: its kind, its text, where it starts, and its parsed value if any."""

    kind: TokenKind
    text: str
    pos: int
    value: object = None


def parse_duration_ms(text: str) -> int:
    """A Prometheus duration (``5m``, ``1h30m``, ``250ms``) in milliseconds; QueryError if bad.

    ``tuner.config.parse_duration_ms`` does the parsing (one duration grammar for configs,
    rule files and PromQL); this raises the query layer's error.
    """
    try:
        return config_duration_ms(text)
    except ValueError as exc:
        raise QueryError(str(exc)) from None


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
            "\\": "\\", "'": "'", '"': '"'}


def _unquote(body: str, quote: str, pos: int) -> str:
    if quote == "`":
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        i += 1
        if i >= len(body):
            raise QueryError(f"unterminated escape in string at position {pos}")
        e = body[i]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 1
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 1 : i + 1 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise QueryError(f"invalid escape \\{e} in string at position {pos}")
            out.append(chr(int(digits, 16)))
            i += 1 + width
        elif e in "01234567":
            digits = body[i : i + 3]
            if len(digits) != 3 or not all(d in "01234567" for d in digits):
                raise QueryError(f"invalid octal escape in string at position {pos}")
            out.append(chr(int(digits, 8)))
            i += 3
        else:
            raise QueryError(f"unknown escape sequence \\{e} in string at position {pos}")
    return "".join(out)


def lex(text: str) -> list[Token]:
    """The tokens of a PromQL expression, ending with an EOF token; QueryError if malformed."""
    toks: list[Token] = []
    i = 0
    n = len(text)
    brackets = 0  # inside [...], ':' separates a subquery's range from its step
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":  # comment to end of line
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c in "\"'`":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\\" and c != "`":
                    j += 1
                elif text[j] == "\n" and c != "`":
                    raise QueryError(f"unterminated string at position {i}")
                j += 1
            if j >= n:
                raise QueryError(f"unterminated string at position {i}")
            body = _unquote(text[i + 1 : j], c, i)
            toks.append(Token(TokenKind.STRING, text[i : j + 1], i, body))
            i = j + 1
            continue
        if c.isdigit() or (c == "." and i + 1 < n and text[i + 1].isdigit()):
            m = _DURATION_RE.match(text, i)
            if m:
                toks.append(Token(TokenKind.DURATION, m.group(), i, parse_duration_ms(m.group())))
                i = m.end()
                continue
            m = _NUMBER_RE.match(text, i)
            assert m is not None
            end = m.end()
            if end < n and (text[end].isalnum() or text[end] in "_:"):
                bad = text[i : end + 1]
                raise QueryError(f"bad number or duration syntax {bad!r} at position {i}")
            raw = m.group()
            value = float(int(raw, 16)) if raw[:2].lower() == "0x" else float(raw)
            toks.append(Token(TokenKind.NUMBER, raw, i, value))
            i = end
            continue
        if c == ":" and brackets > 0:
            toks.append(Token(TokenKind.OP, ":", i))
            i += 1
            continue
        m = _IDENT_RE.match(text, i)
        if m:
            word = m.group()
            if word.lower() in ("inf", "nan"):
                toks.append(Token(TokenKind.NUMBER, word, i, float(word.lower())))
            else:
                toks.append(Token(TokenKind.IDENT, word, i))
            i = m.end()
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                toks.append(Token(TokenKind.OP, op, i))
                brackets += {"[": 1, "]": -1}.get(op, 0)
                i += len(op)
                break
        else:
            raise QueryError(f"unexpected character {c!r} at position {i}")
    toks.append(Token(TokenKind.EOF, "", n))
    return toks


_INLINE_FLAGS_RE = re.compile(r"\(\?([imsU]+)\)")


def go_regexp(pattern: str) -> str:
    """A Go (RE2) regular expression in Python's syntax: inline flags made scoped.

    In Go ``(?i)`` may stand anywhere and holds to the end of the enclosing group
    (``((?i)PRO).*``); Python only takes flags at the very start of a whole pattern (and
    PromQL's anchoring wraps the pattern, so none is at the start). Each ``(?flags)`` becomes
    ``(?flags:`` closed where its group closes. Character classes and escapes are skipped.
    """
    if "(?" not in pattern:
        return pattern
    out: list[str] = []
    extra: list[int] = [0]  # scoped groups opened per nesting level, closed with that level
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[":  # a class: copy to its closing bracket (a leading ']' or '^]' is literal)
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            out.append(pattern[i : j + 1])
            i = j + 1
            continue
        m = _INLINE_FLAGS_RE.match(pattern, i)
        if m:
            out.append(f"(?{m.group(1)}:")
            extra[-1] += 1
            i = m.end()
            continue
        if c == "(":
            extra.append(0)
        elif c == ")" and len(extra) > 1:
            out.append(")" * extra.pop())
        out.append(c)
        i += 1
    out.append(")" * extra[0])
    return "".join(out)
