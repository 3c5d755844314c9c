"""One exception tree: each error knows its HTTP status and OpenAI error type and code.

Services raise these; the API renders every one of them as OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}`` so the SDK raises the matching
``openai.*Error`` with ``.code`` and ``.param`` set.
"""

from __future__ import annotations


class OpenFTError(Exception):
    """Base of every error a caller can see."""

    status_code: int = 400
    error_type: str = "invalid_request_error"
    default_code: str | None = None
    # Response headers that go with the error (Retry-After on a 429).
    headers: dict[str, str] = {}  # never mutated: an error with headers sets its own

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def to_dict(self) -> dict:
        return {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}


class InvalidRequestError(OpenFTError):
    """The caller sent something we cannot accept (400)."""


class NotFoundError(OpenFTError):
    """The object does not exist, or belongs to another organization (404, never 403)."""

    status_code = 404


class AuthenticationError(OpenFTError):
    """Missing or unknown API key (401)."""

    status_code = 401
    default_code = "invalid_api_key"


class PayloadTooLargeError(OpenFTError):
    """An upload or part exceeds the configured limit (413)."""

    status_code = 413


class RequestTimeoutError(OpenFTError):
    """The request body stopped arriving (408; the SDK retries it)."""

    status_code = 408


class RateLimitError(OpenFTError):
    """Too many requests are already waiting (429); ``Retry-After`` tells the client when to try again."""

    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_seconds: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.headers = {"Retry-After": str(retry_after_seconds)}


class ServerError(OpenFTError):
    """Our fault. Never raised after a create has committed (the SDK would retry it)."""

    status_code = 500
    error_type = "server_error"


class PermissionDeniedError(OpenFTError):
    """The caller may see the object but not do this to it, e.g. delete a model shared with it (403)."""

    status_code = 403
    error_type = "permission_error"
