"""A request body that stops arriving is abandoned with a 408 and leaves nothing behind: raw HTTP
against the app under uvicorn, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn

from openft.api.app import create_app
from openft.settings import Settings

LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.fixture
def app(tmp_path, database_url):
    app = create_app(Settings(home=tmp_path / "home", database_url=database_url, body_timeout_seconds=0.5))
    yield app
    app.state.services.close()


@pytest.fixture
def address(app) -> Iterator[tuple[str, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections queue in the kernel until uvicorn accepts them
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _stall(address, path: str, headers: dict[str, str], sent: bytes, declared: int) -> tuple[int, dict]:
    """Send the headers and the first bytes of a ``declared``-byte body, then nothing; return the
    status and JSON body of the server's answer."""
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {declared}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(address, timeout=60) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def _stored(app) -> set[str]:
    root = app.state.services.blobs.root
    return {p.name for p in root.iterdir() if p.name != ".tmp"} | {p.name for p in (root / ".tmp").iterdir()}


def test_stalled_file_upload_answers_408_and_stores_nothing(app, address):
    boundary = "b0undary"
    start = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
    ).encode() + LINE * 100
    status, body = _stall(
        address, "/v1/files", {"Content-Type": f"multipart/form-data; boundary={boundary}"}, start, 10_000_000
    )
    assert status == 408
    assert "stopped arriving" in body["error"]["message"] and "0.5 seconds" in body["error"]["message"]
    assert _stored(app) == set()
    assert app.state.services.files.list(app.state.services.organizations.ensure_default().id)[0] == []


def test_stalled_upload_part_answers_408_and_stores_nothing(app, address):
    services = app.state.services
    org = services.organizations.ensure_default().id
    upload = services.uploads.create(
        org, filename="t.jsonl", purpose="fine-tune", bytes=10_000_000, mime_type="x"
    )
    start = b'--xx\r\nContent-Disposition: form-data; name="data"; filename="blob"\r\n\r\n' + LINE * 100
    status, _ = _stall(
        address,
        f"/v1/uploads/{upload.row.id}/parts",
        {"Content-Type": "multipart/form-data; boundary=xx"},
        start,
        10_000_000,
    )
    assert status == 408
    assert _stored(app) == set()


def test_stalled_json_body_answers_408(address):
    status, body = _stall(
        address, "/v1/fine_tuning/jobs", {"Content-Type": "application/json"}, b'{"model": ', 1000
    )
    assert status == 408 and body["error"]["type"] == "invalid_request_error"
