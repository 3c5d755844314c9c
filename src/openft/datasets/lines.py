"""Streams a JSONL file as numbered, decoded lines in bounded memory, reporting line-level problems."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

from openft.datasets import problems as p
from openft.datasets.problems import Problem

UTF8_BOM = b"\xef\xbb\xbf"
# A line longer than the cap is skipped in pieces of this size, so it never sits whole in memory.
_SKIP_CHUNK = 1 << 16


@dataclass(frozen=True)
class Line:
    """One line of the file: its parsed JSON value, or the problems that kept it from being one.

    ``value`` is None for a blank or broken line (never a JSON ``null``: a line that is ``null``
    becomes a NOT_OBJECT problem). ``stop`` means the file as a whole is not JSONL and reading ends.
    ``size`` is the line's length in the file, in bytes, newline included.
    """

    number: int
    value: dict | None
    errors: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()
    blank: bool = False
    stop: bool = False
    size: int = 0


def read_lines(stream: BinaryIO, *, max_line_bytes: int) -> Iterator[Line]:
    """Yield each line of ``stream`` parsed as a JSON object, with line-level problems.

    Policies (documented in the package docstring): a UTF-8 BOM at the start of the file is
    accepted with a warning; blank lines are skipped with a warning; CRLF endings are accepted.
    The first non-blank line decides whether the file is JSONL at all; if not, one problem says
    so and reading stops rather than reporting every line.
    """
    offset = 0
    number = 0
    seen_content = False
    while True:
        chunk = stream.readline(max_line_bytes + 1)
        if isinstance(chunk, str):
            raise TypeError("the training file must be opened in binary mode ('rb'), not as text")
        if not chunk:
            return
        number += 1
        start = offset
        offset += len(chunk)
        if len(chunk) > max_line_bytes and not chunk.endswith(b"\n"):
            total = len(chunk)
            while True:
                more = stream.readline(_SKIP_CHUNK)
                offset += len(more)
                total += len(more)
                if more.endswith(b"\n"):
                    total -= 1  # the newline is not part of the example
                    break
                if not more:
                    break
            yield _problem_line(
                number,
                p.LINE_TOO_LONG,
                f"is {total:,} bytes long, over the limit of {max_line_bytes:,} bytes per example; "
                "shorten or split this example (very long lines are often embedded images or whole "
                "documents)",
                size=offset - start,
            )
            seen_content = True
            continue
        has_newline = chunk.endswith(b"\n")
        line = replace(_parse(chunk, number, start, has_newline, first=not seen_content), size=len(chunk))
        if not line.blank:
            seen_content = True
        yield line
        if line.stop:
            return


def _parse(chunk: bytes, number: int, start: int, has_newline: bool, *, first: bool) -> Line:
    warnings: tuple[Problem, ...] = ()
    if chunk.startswith(UTF8_BOM):
        if number == 1:
            warnings = (
                Problem(
                    number, None, None, "starts with a UTF-8 byte-order mark (BOM); it was ignored", p.BOM
                ),
            )
            chunk = chunk[len(UTF8_BOM) :]
            start += len(UTF8_BOM)
        else:
            return _problem_line(
                number,
                p.BOM,
                "starts with a UTF-8 byte-order mark (BOM) in the middle of the file, which usually means "
                "files were concatenated; remove the BOM bytes (EF BB BF) from this line",
            )
    if first and chunk.startswith((b"\xff\xfe", b"\xfe\xff")):
        return _stop_line(
            number,
            "The file is UTF-16 encoded; training files must be UTF-8 JSONL. Save it again as UTF-8.",
        )
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        if first and b"\x00" in chunk:
            return _stop_line(
                number,
                "The file looks binary (line 1 contains NUL bytes), not UTF-8 JSONL text; upload the "
                "uncompressed .jsonl file, one JSON object per line.",
            )
        bad = chunk[exc.start]
        return _problem_line(
            number,
            p.ENCODING,
            f"is not valid UTF-8: byte 0x{bad:02x} at byte offset {start + exc.start} of the file "
            f"(column {exc.start + 1} of the line); save the file as UTF-8",
        )
    text = text.strip()
    if not text:
        return Line(
            number,
            None,
            warnings=(*warnings, Problem(number, None, None, "is blank", p.BLANK_LINE)),
            blank=True,
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return _json_problem(number, text, exc, has_newline, first=first, warnings=warnings)
    except RecursionError:
        return _problem_line(number, p.JSON, "is nested too deeply to be a training example")
    if isinstance(value, dict):
        return Line(number, value, warnings=warnings)
    if first and isinstance(value, list):
        return _stop_line(
            number,
            "The file is a JSON array, not JSONL. Write one example object per line, without the "
            "surrounding [ ] or commas between examples (for example: jq -c '.[]' data.json > data.jsonl).",
        )
    return _problem_line(
        number,
        p.NOT_OBJECT,
        f'is {p.json_type(value)}, not a JSON object; each line must be one example like {{"messages": [...]}}',
    )


def _json_problem(
    number: int,
    text: str,
    exc: json.JSONDecodeError,
    has_newline: bool,
    *,
    first: bool,
    warnings: tuple[Problem, ...],
) -> Line:
    ends_early = exc.pos >= len(text)
    if first:
        if text.startswith("[") or (text.startswith("{") and ends_early and has_newline):
            return _stop_line(
                number,
                "The file looks like pretty-printed JSON spread over several lines, not JSONL. Write each "
                "example as one JSON object on a single line (for example: jq -c '.[]' data.json > data.jsonl).",
            )
        if not text.startswith("{"):
            return _stop_line(
                number,
                "The file is not JSONL: line 1 is not JSON (is it CSV or plain text?). A training file has "
                'one JSON object per line, like {"messages": [{"role": "user", "content": "..."}, ...]}.',
            )
    if not has_newline:
        detail = (
            "looks truncated: it is not valid JSON and the file ends without a newline; the file may have "
            "been cut short, so upload it again in full"
        )
        kind = p.TRUNCATED
    elif exc.msg == "Extra data":
        detail = "holds more than one JSON value; put each example on its own line"
        kind = p.JSON
    elif ends_early:
        detail = (
            "is not valid JSON: the object does not end on this line; each example must be a whole JSON "
            "object on a single line"
        )
        kind = p.JSON
    else:
        detail = (
            f"is not valid JSON: {exc.msg} at column {exc.colno}; each line must be one complete JSON object"
        )
        kind = p.JSON
    return Line(number, None, (Problem(number, None, None, detail, kind),), warnings)


def _problem_line(number: int, kind: str, message: str, *, size: int = 0) -> Line:
    return Line(number, None, (Problem(number, None, None, message, kind),), size=size)


def _stop_line(number: int, message: str) -> Line:
    return Line(number, None, (Problem(number, None, None, message, p.NOT_JSONL),), stop=True)
