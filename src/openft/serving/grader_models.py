"""Model graders' chat client over the models openft serves (base, ``ft:`` and checkpoints).

``score_model`` and ``label_model`` graders name a model; this client answers through the same
engine as ``/v1/chat/completions`` (the API's, or the training child's own), and hands names that
openft does not serve to the operator's external endpoint when one is configured.
"""

from __future__ import annotations

from typing import Any

from openft.errors import OpenFTError
from openft.graders.model_graders import ChatClient, ChatClientError, ChatReply
from openft.serving import response
from openft.serving.protocols import ChatEngine, ModelResolver
from openft.serving.request import parse_chat_request


class EngineChatClient:
    def __init__(
        self,
        resolver: ModelResolver,
        engine: ChatEngine,
        organization_id: str,
        external: ChatClient | None = None,
    ) -> None:
        self.resolver = resolver
        self.engine = engine
        self.organization_id = organization_id
        self.external = external

    def complete(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> ChatReply:
        try:
            resolved = self.resolver.resolve(self.organization_id, model)
        except OpenFTError as exc:
            if self.external is not None:
                return self.external.complete(model, messages, params)
            raise ChatClientError(f"the grader model {model!r} is not available: {exc.message}") from exc
        try:
            request = parse_chat_request({"model": model, "messages": messages, **params})
            body = response.completion(model, self.engine.generate(resolved, request))
        except OpenFTError as exc:
            raise ChatClientError(f"the grader model {model!r} could not answer: {exc.message}") from exc
        choice = body["choices"][0]
        return ChatReply(
            text=choice["message"].get("content") or "",
            model=model,
            prompt_tokens=body["usage"]["prompt_tokens"],
            completion_tokens=body["usage"]["completion_tokens"],
        )
