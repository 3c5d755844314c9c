"""Wire shapes shared by every resource: the error envelope and the cursor-list envelope."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class Error(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: Error


class CursorPage(BaseModel, Generic[T]):
    """OpenAI's list envelope; first_id/last_id are always sent (harmless where the spec omits them)."""

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, data: list[T], has_more: bool, id_of=lambda item: item.id) -> CursorPage[T]:
        return cls(
            data=data,
            first_id=id_of(data[0]) if data else None,
            last_id=id_of(data[-1]) if data else None,
            has_more=has_more,
        )
