"""Grader templates: ``{{item.<path>}}`` and ``{{sample.<path>}}`` substituted into grader strings.

A path is dotted and may index lists (``{{sample.output_tools[0].function.name}}`` or
``{{item.answers.0}}``). ``item`` is the dataset row (every field of it); ``sample`` holds the
model's answer: ``output_text``, ``output_json`` (the answer parsed as JSON, when it is JSON),
``output_tools`` and ``choices``. Strings are substituted as they are; other values as JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

NAMESPACES = ("item", "sample")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices")
# {{ namespace.path }}, spaces allowed inside the braces
PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


class TemplateVariableError(LookupError):
    """A placeholder names a variable the item or sample does not have."""


def parse_path(expression: str) -> list[str | int]:
    """``sample.output_tools[0].function`` -> ``["sample", "output_tools", 0, "function"]``."""
    parts: list[str | int] = []
    position = 0
    for match in _SEGMENT.finditer(expression):
        gap = expression[position : match.start()]
        if gap not in ("", "."):
            raise ValueError(f"unexpected {gap!r} in {expression!r}")
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        position = match.end()
    if position != len(expression) or not parts:
        raise ValueError(f"cannot read the variable {expression!r}")
    return parts


def check_template(text: str) -> str | None:
    """Why ``text`` is not a valid template (a readable reason), or None when it is."""
    if text.count("{{") != len(PLACEHOLDER.findall(text)):
        return "it has an unclosed '{{' placeholder"
    for expression in PLACEHOLDER.findall(text):
        try:
            path = parse_path(expression)
        except ValueError as exc:
            return str(exc)
        if path[0] not in NAMESPACES or len(path) < 2:
            return (
                f"the placeholder {{{{{expression}}}}} must name a variable of the 'item' or 'sample' namespace, "
                "like {{item.answer}} or {{sample.output_text}}"
            )
        if path[0] == "sample" and path[1] not in SAMPLE_FIELDS:
            return (
                f"the placeholder {{{{{expression}}}}} names {path[1]!r}; the sample namespace has "
                f"{', '.join(SAMPLE_FIELDS)}"
            )
    return None


def lookup(namespaces: dict[str, Any], path: list[str | int]) -> Any:
    value: Any = namespaces
    for part in path:
        if isinstance(value, dict) and isinstance(part, str) and part in value:
            value = value[part]
        elif isinstance(value, dict) and isinstance(part, int) and str(part) in value:
            value = value[str(part)]
        elif isinstance(value, list) and (isinstance(part, int) or str(part).isdigit()):
            index = int(part)
            if index >= len(value):
                raise TemplateVariableError(_dotted(path))
            value = value[index]
        else:
            raise TemplateVariableError(_dotted(path))
    return value


def render(text: str, namespaces: dict[str, Any]) -> str:
    """Substitute every placeholder; raises ``TemplateVariableError`` for a missing variable."""

    def substitute(match: re.Match) -> str:
        value = lookup(namespaces, parse_path(match.group(1)))
        if isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False)

    return PLACEHOLDER.sub(substitute, text)


def sample_namespace(model_sample: str, output_tools: list | None = None) -> dict[str, Any]:
    """The ``sample`` namespace of one answer: ``output_json`` is set when the text is valid JSON."""
    try:
        output_json = json.loads(model_sample)
    except ValueError:
        output_json = None
    return {
        "output_text": model_sample,
        "output_json": output_json,
        "output_tools": list(output_tools or []),
        "choices": [],
    }


def _dotted(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))
