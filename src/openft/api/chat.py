"""POST /v1/chat/completions: OpenAI's chat completions over base models, adapters and checkpoints."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from openft.api.disconnect import unless_disconnected
from openft.errors import InvalidRequestError
from openft.serving import response
from openft.serving.protocols import ChatEngine, ModelResolver
from openft.serving.request import parse_chat_request

router = APIRouter()

# Used when no auth middleware has set request.state.scope (tests, single-user mode).
DEFAULT_ORGANIZATION = "org-default"
# nginx's "client closed request": logged, never seen by the client that left.
CLIENT_CLOSED_REQUEST = 499


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
    # Rendering and tokenizing the prompt costs CPU: off the event loop. Sampling happens in the model's batch.
    generation = await run_in_threadpool(engine.generate, model, chat)
    if chat.stream:
        chunks = response.achunks(chat.model, generation, include_usage=chat.include_usage)
        return StreamingResponse(response.aserver_sent_events(chunks), media_type="text/event-stream")
    completion = response.acompletion(chat.model, generation)
    result = await unless_disconnected(request, completion, on_disconnect=generation.events.close)
    return JSONResponse(result) if result is not None else Response(status_code=CLIENT_CLOSED_REQUEST)
