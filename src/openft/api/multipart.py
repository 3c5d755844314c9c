"""Streams a multipart/form-data body: small text fields into a dict, one file part to a sink."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from openft.api.bodies import receive_chunk
from openft.errors import InvalidRequestError
from openft.services.files import MAX_FILENAME, MAX_MIME_TYPE, check_text

T = TypeVar("T")
MAX_FIELD_BYTES = 64 * 1024
# Every part besides the file together (names, headers and values): a form has a few short fields.
MAX_FIELDS_BYTES = 1024 * 1024
# What python-multipart accepts; RFC 2046 itself allows 70.
MAX_BOUNDARY = 256


@dataclass
class Form(Generic[T]):
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    content_type: str | None = None
    stored: T | None = None


class _Reader:
    """Feeds request chunks to python-multipart and replays its callbacks as a queue of events."""

    def __init__(self, request: Request, boundary: bytes, timeout: float) -> None:
        self.events: deque[tuple] = deque()
        self.header_name = b""
        self.header_value = b""
        self.header_bytes = 0
        self.closed = False  # the closing boundary was seen
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
                "on_end": self._closed,
            },
        )
        self.receive = request.receive
        self.timeout = timeout
        self.finished = False

    def _closed(self) -> None:
        self.closed = True

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]
        self._count_header(end - start)

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]
        self._count_header(end - start)

    def _count_header(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > MAX_FIELDS_BYTES:
            raise InvalidRequestError(
                f"The multipart/form-data body has more than {MAX_FIELDS_BYTES} bytes of part headers."
            )

    def _header_end(self) -> None:
        self.events.append(("header", self.header_name.lower(), self.header_value))
        self.header_name = self.header_value = b""

    async def next_event(self) -> tuple | None:
        while not self.events:
            if self.finished:
                return None
            message = await receive_chunk(self.receive, self.timeout)
            if message["type"] == "http.disconnect":
                raise InvalidRequestError("The client disconnected before sending the whole body.")
            if not message.get("more_body", False):
                self.finished = True
            try:
                self.parser.write(message.get("body", b""))
            except FormParserError as exc:
                raise InvalidRequestError(f"Malformed multipart/form-data body: {exc}.") from None
        return self.events.popleft()

    async def part_data(self) -> AsyncIterator[bytes]:
        """The data of the current part; raises if the body ends inside it, so that a file sink
        never stores a truncated file as if it were whole."""
        while (event := await self.next_event()) is not None:
            if event[0] == "end":
                return
            if event[0] == "data" and event[1]:
                yield event[1]
        raise _unterminated()


def _unterminated() -> InvalidRequestError:
    return InvalidRequestError(
        "Malformed multipart/form-data body: it ends before its closing boundary (the upload was "
        "cut short?). Nothing was stored; send the whole body again."
    )


def _text(raw: bytes, what: str, limit: int, param: str) -> str:
    return check_text(raw.decode("utf-8", "replace"), what, limit, param)


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
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise InvalidRequestError(
            f"Expected a multipart/form-data body; send the file as a form part named '{file_field}'.",
            param=file_field,
        )
    if len(params[b"boundary"]) > MAX_BOUNDARY:
        raise InvalidRequestError(
            f"The multipart boundary is {len(params[b'boundary'])} characters long; at most "
            f"{MAX_BOUNDARY} are allowed (RFC 2046 asks for at most 70)."
        )
    reader = _Reader(request, params[b"boundary"], request.app.state.services.settings.body_timeout_seconds)
    form: Form[T] = Form()
    fields_bytes = 0
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
                form.filename = _text(
                    disposition.get(b"filename", b"upload"), "filename", MAX_FILENAME, file_field
                )
                form.content_type = _text(
                    headers.get(b"content-type", b"application/octet-stream"),
                    "file part's Content-Type",
                    MAX_MIME_TYPE,
                    file_field,
                )
                form.stored = await sink(reader.part_data())
                continue
            value = b""
            async for chunk in reader.part_data():
                value += chunk
                fields_bytes += len(chunk)
                if len(value) > MAX_FIELD_BYTES:
                    raise InvalidRequestError(f"Form field '{name}' is too long.", param=name)
                if fields_bytes > MAX_FIELDS_BYTES:
                    raise InvalidRequestError(
                        f"The form's fields besides '{file_field}' hold more than {MAX_FIELDS_BYTES} bytes.",
                        param=name,
                    )
            form.fields[name] = _text(value, f"form field '{name}'", MAX_FIELD_BYTES, name)
        if not reader.closed:
            raise _unterminated()
    except BaseException:
        if form.stored is not None:
            discard(form.stored)
        raise
    if form.stored is None:
        raise InvalidRequestError(f"Missing required parameter: '{file_field}'.", param=file_field)
    return form
