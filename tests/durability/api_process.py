"""Serve the API on a Unix socket: ``python api_process.py SOCKET`` (settings from OPENFT_* env)."""

from __future__ import annotations

import sys

import uvicorn

from openft.api.app import create_app
from openft.settings import Settings

if __name__ == "__main__":
    uvicorn.run(create_app(Settings.from_env()), uds=sys.argv[1], log_level="warning")
