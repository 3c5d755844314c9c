"""``score_model`` and ``label_model``: ask a chat model about the sample and read its answer.

The model is reached through a ``ChatClient``: openft's own models (a base model, an ``ft:`` model
or a checkpoint) in the API process or the training child, or an OpenAI-compatible endpoint the
operator configured (``OpenAICompatibleClient``). Input messages are OpenAI's eval items with
templates; only text content is supported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from openft.graders.templates import render

DEFAULT_MAX_TOKENS = 256
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class ChatReply:
    text: str
    model: str  # the model that answered, as it named itself
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refusal: str | None = None


class ChatClientError(RuntimeError):
    """The grader model could not be reached or refused the request (model_grader_server_error)."""


class ChatClient(Protocol):
    def complete(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> ChatReply:
        """One chat completion; ``params`` holds ``temperature``, ``top_p``, ``seed``, ``max_tokens``."""
        ...


def render_messages(messages: tuple[dict[str, Any], ...], namespaces: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for message in messages:
        content = message["content"]
        parts = content if isinstance(content, list) else [content]
        texts = [part if isinstance(part, str) else part["text"] for part in parts]
        out.append({"role": message["role"], "content": render("\n".join(texts), namespaces)})
    return out


def chat_params(sampling: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {
        "max_tokens": sampling.get("max_completions_tokens")
        or sampling.get("max_tokens")
        or DEFAULT_MAX_TOKENS
    }
    for key in ("temperature", "top_p", "seed"):
        if sampling.get(key) is not None:
            params[key] = sampling[key]
    return params


def parse_score(text: str) -> float | None:
    """A score from the model's answer: ``{"result": x}`` (OpenAI's structured form) or the first number."""
    stripped = text.strip()
    try:
        data = json.loads(stripped)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("result", "score", "reward"):
            value = data.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    elif isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    match = _NUMBER.search(stripped)
    return float(match.group()) if match else None


def parse_label(text: str, labels: tuple[str, ...]) -> str | None:
    """The label the model chose: ``{"result": label}``, the whole answer, or the first label it names."""
    stripped = text.strip()
    try:
        data = json.loads(stripped)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("result"), str):
        stripped = data["result"].strip()
    lowered = stripped.lower().strip(" .\"'`")
    for label in labels:
        if lowered == label.lower():
            return label
    found = [(lowered.find(label.lower()), label) for label in labels if label.lower() in lowered]
    return min(found)[1] if found else None


class OpenAICompatibleClient:
    """A chat client for an external OpenAI-compatible endpoint (``OPENFT_GRADER_BASE_URL``)."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 120.0) -> None:
        import openai

        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "unused", timeout=timeout, max_retries=2
        )

    def complete(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> ChatReply:
        import openai

        try:
            reply = self._client.chat.completions.create(model=model, messages=messages, **params)
        except openai.OpenAIError as exc:
            raise ChatClientError(f"{type(exc).__name__}: {exc}") from exc
        choice = reply.choices[0]
        usage = reply.usage
        return ChatReply(
            text=choice.message.content or "",
            model=reply.model or model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            refusal=getattr(choice.message, "refusal", None),
        )
