"""Renders every error as OpenAI's envelope and stamps every response with an x-request-id."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openft import ids
from openft.errors import OpenFTError

logger = logging.getLogger(__name__)

MALFORMED_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, check the request body you send.)"
)
# Where FastAPI says a value came from; not part of the field path a caller knows.
_LOCATIONS = {"body", "query", "path", "header", "cookie"}


def envelope(status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None):
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status
    )


async def _openft_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenFTError)
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status_code, headers=exc.headers)


def _param(loc: tuple | list) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(parts) or None


def _readable(error: dict) -> str:
    param = _param(error.get("loc", ()))
    message = error.get("msg", "Invalid value")
    if error.get("type") == "missing":
        return f"Missing required parameter: '{param}'."
    if error.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}"
    value = error.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict | list) else ""
    return f"Invalid value for '{param}': {message}{shown}." if param else f"{message}."


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return envelope(400, MALFORMED_JSON, type_="invalid_request_error")
    first = errors[0] if errors else {}
    return envelope(400, _readable(first), type_="invalid_request_error", param=_param(first.get("loc", ())))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}."
    else:
        message = str(exc.detail)
    response = envelope(exc.status_code, message, type_="invalid_request_error")
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    response = envelope(
        500, "The server had an error while processing your request. Sorry about that!", type_="server_error"
    )
    # Starlette runs this handler outside every middleware, so stamp the id here. The write may
    # have committed; a retry would then duplicate it.
    response.headers["x-request-id"] = getattr(request.state, "request_id", None) or ids.request_id()
    response.headers["x-should-retry"] = "false"
    return response


class RequestIdMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware) so streamed responses stay streamed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ids.request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def install(app: FastAPI) -> None:
    app.add_middleware(RequestIdMiddleware)
    app.add_exception_handler(OpenFTError, _openft_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
