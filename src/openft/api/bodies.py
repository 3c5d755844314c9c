"""Request bodies before any route sees them: JSON whatever the Content-Type, bounded, never hostile.

OpenAI reads every non-multipart body as JSON, so its own curl examples send ``-d '{...}'`` with
curl's default ``application/x-www-form-urlencoded`` (or no Content-Type at all). openft does the
same: a body that is not ``multipart/form-data`` is JSON. Before the app parses it, this
middleware refuses what would cost memory or a 500 later (413 past the size limit, 400 for
nesting the parser cannot recurse into, NaN/Infinity, NUL characters PostgreSQL cannot store),
and turns an empty body into ``{}`` so that a create without fields names the first missing one.
A body that stops arriving is abandoned after ``body_timeout_seconds`` (408).

Multipart bodies pass through; ``multipart.read_form`` streams and limits them itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openft import jsontext
from openft.api.errors import MALFORMED_JSON
from openft.errors import InvalidRequestError, OpenFTError, PayloadTooLargeError, RequestTimeoutError
from openft.settings import Settings

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


def is_multipart(scope: Scope) -> bool:
    content_type = _header(scope, b"content-type") or b""
    return content_type.split(b";", 1)[0].strip().lower() == b"multipart/form-data"


async def receive_chunk(receive: Receive, timeout: float) -> Message:
    """The next ASGI message of a request body, or RequestTimeoutError after ``timeout`` seconds
    without one (a client that stopped sending holds a connection and, for uploads, a temporary)."""
    with anyio.move_on_after(timeout) as scope:
        return await receive()
    assert scope.cancelled_caught
    raise RequestTimeoutError(
        f"The request body stopped arriving: no bytes for {timeout:g} seconds. Send the body again "
        "(for large files, use the Uploads API and retry only the part that failed)."
    )


def check_json(body: bytes) -> None:
    """Raise InvalidRequestError for JSON text the app must not try to parse or store."""
    if jsontext.nesting_depth_exceeds(body):
        raise InvalidRequestError(
            f"The JSON body nests arrays and objects more than {jsontext.MAX_DEPTH} levels deep. "
            "Flatten the request."
        )
    if jsontext.has_non_standard_numbers(body):
        raise InvalidRequestError(
            f"{MALFORMED_JSON} NaN and Infinity are not JSON numbers: send a finite number."
        )
    if jsontext.has_escaped_nul(body):
        try:
            where = jsontext.first_nul_path(json.loads(body))
        except ValueError:
            return  # malformed anyway: the app answers with the parse error
        raise InvalidRequestError(
            f"Invalid value for '{where}': it contains a NUL character (\\u0000), which is not allowed "
            "in any text field."
            if where
            else "The request contains a NUL character (\\u0000).",
            param=where,
        )


class RequestBodies:
    """Pure ASGI middleware (streamed responses stay streamed); ``settings`` is read per request
    so a test or an operator's reload sees the current limits."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS or is_multipart(scope):
            await self.app(scope, receive, send)
            return
        settings = self.settings()
        try:
            body = await self._read(scope, receive, settings)
            if not body.strip():
                body = b"{}"
            check_json(body)
        except OpenFTError as exc:
            await _reply(scope, send, exc)
            return
        headers = [
            (key, value)
            for key, value in scope.get("headers", [])
            if key.lower() not in (b"content-type", b"content-length", b"transfer-encoding")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # After the body: the client's disconnect, which streaming responses listen for.
            return await receive()

        # The scope is changed in place, not copied: outer middleware (request latency by route)
        # reads what routing writes into it.
        scope["headers"] = headers
        await self.app(scope, replay, send)

    async def _read(self, scope: Scope, receive: Receive, settings: Settings) -> bytes:
        limit = settings.max_json_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive_chunk(receive, settings.body_timeout_seconds)
            if message["type"] == "http.disconnect":
                raise InvalidRequestError("The client disconnected before sending the whole body.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The JSON request body is larger than {limit} bytes (OPENFT_MAX_JSON_BODY_BYTES). Send files "
        "through POST /v1/files or the Uploads API, not inside a JSON body."
    )


async def _reply(scope: Scope, send: Send, error: OpenFTError) -> None:
    body = json.dumps({"error": error.to_dict()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The body was not read to its end: the connection cannot carry another request.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
