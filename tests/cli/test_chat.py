"""`openft chat`: streams tokens from any OpenAI-compatible endpoint as they arrive.

openft's chat route is not mounted by create_app yet, so this runs against a minimal streaming
endpoint that speaks the wire format (server-sent chat.completion.chunk events) and records what
it was sent; switch to the live openft with a tiny base model once chat is integrated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from live import Openft, serve


def _chunk(content: str | None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "ft:tiny:personal::abcdefgh",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


@pytest.fixture
def streaming_endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> StreamingResponse:
        body = await request.json()
        received.append(body)
        reply = f"echo {len(body['messages'])}".split(" ")
        pieces = [_chunk(reply[0]), _chunk(" " + reply[1]), _chunk(None, "stop"), "data: [DONE]\n\n"]
        return StreamingResponse(iter(pieces), media_type="text/event-stream")

    with serve(app) as url:
        yield f"{url}/v1", received


def test_chat_message_streams_the_answer(streaming_endpoint: tuple[str, list[dict[str, Any]]]) -> None:
    base_url, received = streaming_endpoint
    result = Openft(base_url)("chat", "ft:tiny:personal::abcdefgh", "--message", "hi", "--system", "be brief")
    assert result.stdout == "echo 2\n"
    assert received[0]["stream"] is True
    assert received[0]["model"] == "ft:tiny:personal::abcdefgh"
    assert received[0]["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


def test_chat_interactive_keeps_the_conversation(
    streaming_endpoint: tuple[str, list[dict[str, Any]]],
) -> None:
    base_url, received = streaming_endpoint
    result = Openft(base_url)("chat", "some-model", input="first\nsecond\n\n")
    assert "echo 1" in result.stdout and "echo 3" in result.stdout
    assert [m["content"] for m in received[1]["messages"]] == ["first", "echo 1", "second"]
