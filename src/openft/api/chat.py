"""POST /v1/chat/completions: OpenAI's chat completions over base models, adapters and checkpoints."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from openft.errors import InvalidRequestError
from openft.serving import response
from openft.serving.protocols import ChatEngine, ModelResolver
from openft.serving.request import parse_chat_request

router = APIRouter()

# Used when no auth middleware has set request.state.scope (tests, single-user mode).
DEFAULT_ORGANIZATION = "org-default"


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request):
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise InvalidRequestError("The request body is not valid JSON.") from None
    chat = parse_chat_request(body)
    resolver: ModelResolver = request.app.state.model_resolver
    engine: ChatEngine = request.app.state.inference
    owner = getattr(request.state, "scope", None) or DEFAULT_ORGANIZATION
    model = await run_in_threadpool(resolver.resolve, owner, chat.model)
    generation = await run_in_threadpool(engine.generate, model, chat, background=chat.stream)
    if chat.stream:
        chunks = response.chunks(chat.model, generation, include_usage=chat.include_usage)
        return StreamingResponse(response.server_sent_events(chunks), media_type="text/event-stream")
    return JSONResponse(await run_in_threadpool(response.completion, chat.model, generation))
