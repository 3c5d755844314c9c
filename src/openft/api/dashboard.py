"""The web dashboard: serves its page at ``/`` and its static files under ``/dashboard/``.

The dashboard is a static front-end that calls the public ``/v1`` API from the browser with the
user's key, like any other client; nothing here reads the database or needs authentication.
Mount it with ``app.include_router(dashboard.router)`` (outside the ``/v1`` prefix).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from openft.errors import NotFoundError

STATIC_DIR = Path(__file__).parent / "static"
# Set explicitly: browsers refuse ES modules served with a wrong type, and the platform's mimetypes
# table varies between machines.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type=MEDIA_TYPES[".html"])


@router.get("/dashboard")
def dashboard_root() -> RedirectResponse:
    return RedirectResponse("/")


@router.get("/dashboard/{path:path}")
def static_file(path: str) -> FileResponse:
    target = (STATIC_DIR / path).resolve()
    # resolve() folds "..", so anything outside the static folder is refused, not served.
    if (
        not target.is_relative_to(STATIC_DIR.resolve())
        or not target.is_file()
        or target.suffix not in MEDIA_TYPES
    ):
        raise NotFoundError(f"No dashboard file {path!r}.", param="path")
    return FileResponse(target, media_type=MEDIA_TYPES[target.suffix], headers={"Cache-Control": "no-cache"})
