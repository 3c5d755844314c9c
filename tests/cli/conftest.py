"""Fixtures for the client commands: a live openft on a free port, and a runner for ``openft ...``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live import LiveServer, Openft, build_app, serve, write_chat_file


@pytest.fixture
def live_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    app = build_app(home)
    try:
        with serve(app) as url:
            yield LiveServer(f"{url}/v1", app)
    finally:
        app.state.services.close()


@pytest.fixture
def openft(live_server: LiveServer) -> Openft:
    return Openft(live_server.base_url)


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    return write_chat_file(tmp_path / "train.jsonl")
