"""Uploads: a large file sent in parts, then assembled atomically into one File."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openft.services.context import Services


class UploadService:
    def __init__(self, services: Services) -> None:
        self.services = services
