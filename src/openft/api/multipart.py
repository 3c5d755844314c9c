"""Streams a multipart/form-data body: small text fields into a dict, one file part to a sink."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from openft.errors import InvalidRequestError

T = TypeVar("T")
MAX_FIELD_BYTES = 64 * 1024


@dataclass
class Form(Generic[T]):
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    content_type: str | None = None
    stored: T | None = None


class _Reader:
    """Feeds request chunks to python-multipart and replays its callbacks as a queue of events."""

    def __init__(self, request: Request, boundary: bytes) -> None:
        self.events: deque[tuple] = deque()
        self.header_name = b""
        self.header_value = b""
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": lambda: self.events.append(("begin",)),
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": lambda: self.events.append(("headers_done",)),
                # The parser reuses its buffer: copy the slice.
                "on_part_data": lambda data, start, end: self.events.append(("data", bytes(data[start:end]))),
                "on_part_end": lambda: self.events.append(("end",)),
            },
        )
        self.stream = request.stream().__aiter__()
        self.finished = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _header_end(self) -> None:
        self.events.append(("header", self.header_name.lower(), self.header_value))
        self.header_name = self.header_value = b""

    async def next_event(self) -> tuple | None:
        while not self.events:
            if self.finished:
                return None
            try:
                chunk = await self.stream.__anext__()
            except StopAsyncIteration:
                self.finished = True
                self.parser.finalize()
                continue
            try:
                self.parser.write(chunk)
            except MultipartParseError as exc:
                raise InvalidRequestError(f"Malformed multipart/form-data body: {exc}.") from None
        return self.events.popleft()

    async def part_data(self) -> AsyncIterator[bytes]:
        while (event := await self.next_event()) is not None and event[0] != "end":
            if event[0] == "data" and event[1]:
                yield event[1]


async def read_form(
    request: Request,
    file_field: str,
    sink: Callable[[AsyncIterator[bytes]], Awaitable[T]],
    discard: Callable[[T], None],
) -> Form[T]:
    """Read the whole body, handing the ``file_field`` part to ``sink`` as it arrives.

    ``discard`` undoes the sink if the body turns out malformed after the file was stored.
    Raises InvalidRequestError (param ``file_field``) when the file part is missing.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidRequestError(
            f"Expected a multipart/form-data body; send the file as a form part named '{file_field}'.",
            param=file_field,
        )
    reader = _Reader(request, params[b"boundary"])
    form: Form[T] = Form()
    try:
        while (event := await reader.next_event()) is not None:
            if event[0] != "begin":
                continue
            headers: dict[bytes, bytes] = {}
            while (event := await reader.next_event()) is not None and event[0] == "header":
                headers[event[1]] = event[2]
            _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
            name = disposition.get(b"name", b"").decode("utf-8", "replace")
            if name == file_field and form.stored is None:
                form.filename = disposition.get(b"filename", b"upload").decode("utf-8", "replace")
                form.content_type = headers.get(b"content-type", b"application/octet-stream").decode(
                    "latin-1"
                )
                form.stored = await sink(reader.part_data())
                continue
            value = b""
            async for chunk in reader.part_data():
                value += chunk
                if len(value) > MAX_FIELD_BYTES:
                    raise InvalidRequestError(f"Form field '{name}' is too long.", param=name)
            form.fields[name] = value.decode("utf-8", "replace")
    except BaseException:
        if form.stored is not None:
            discard(form.stored)
        raise
    if form.stored is None:
        raise InvalidRequestError(f"Missing required parameter: '{file_field}'.", param=file_field)
    return form
