"""Routes of /v1/uploads: create an upload, add parts, complete or cancel it."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["uploads"])
