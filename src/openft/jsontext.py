"""Checks on raw JSON text made before it is parsed, so a hostile document cannot hurt the parser.

Python's ``json`` recurses once per nesting level: a body of 100,000 ``[`` raises RecursionError
(a 500) instead of a clear 400. These checks run at C speed on the bytes: strings are cut out
first (UTF-8 never puts a ``"`` or ``\\`` byte inside a multi-byte character), so what is left is
structure, numbers and the literals.
"""

from __future__ import annotations

import re
from itertools import accumulate

# serde_json's default; deeper than any real request (a tools schema nests a few dozen levels).
MAX_DEPTH = 128

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
# NaN and Infinity are Python's extensions: no JSON parser elsewhere reads them back.
_NON_STANDARD = re.compile(rb"NaN|Infinity")
# An escaped NUL: an odd number of backslashes before u0000 (``\\u0000`` is a backslash and text).
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _structure(text: bytes) -> bytes:
    return _STRING.sub(b'""', text)


def nesting_depth_exceeds(text: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in ``text`` nest more than ``limit`` levels deep.

    Malformed text counts as it reads: an unclosed ``[[[[`` is as deep as its openers."""
    brackets = _structure(text).translate(None, _NOT_BRACKET)
    openers = brackets.count(b"[") + brackets.count(b"{")
    if openers <= limit:
        return False
    # Depth after each bracket: openers weigh 2, closers 0; depth_i = sum_i - (i + 1).
    weights = brackets.translate(bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00"))
    depths = map(int.__sub__, accumulate(weights), range(1, len(weights) + 1))
    return max(depths) > limit


def has_non_standard_numbers(text: bytes) -> bool:
    """Whether ``text`` uses NaN or Infinity outside strings (Python accepts them, JSON does not)."""
    return _NON_STANDARD.search(_structure(text)) is not None


def has_escaped_nul(text: bytes) -> bool:
    """Whether a string in ``text`` holds a NUL character (PostgreSQL text cannot store one)."""
    return b"\\u0000" in text and _ESCAPED_NUL.search(text) is not None


def first_nul_path(value: object, path: str = "") -> str | None:
    """The dotted path (``metadata.key``, ``messages.0.content``) of the first key or string
    value holding a NUL character in a parsed document; None if there is none."""
    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return where or None
        elif isinstance(node, dict):
            for key, item in reversed(list(node.items())):
                inner = f"{where}.{key}" if where else str(key)
                if "\x00" in key:
                    return where or inner
                stack.append((item, inner))
        elif isinstance(node, list):
            for index in range(len(node) - 1, -1, -1):
                stack.append((node[index], f"{where}.{index}" if where else str(index)))
    return None
