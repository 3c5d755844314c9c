"""The seams of serving: what the chat router needs from model resolution and from the inference engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from openft.errors import NotFoundError

if TYPE_CHECKING:
    from openft.serving.request import ChatRequest

FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ResolvedModel:
    """Where the weights behind a served model name live.

    ``adapter_path`` set: a LoRA adapter on ``base_path``. ``full_model_path`` set: a full fine-tuned
    model loaded on its own. Neither: the base model itself.
    """

    name: str
    base_path: str
    adapter_path: str | None = None
    full_model_path: str | None = None


class ModelResolver(Protocol):
    def resolve(self, owner: Any, model: str) -> ResolvedModel:
        """Return the weights for ``model`` as the caller (its ``Scope``: organization and project)
        may use them; raise ``NotFoundError`` if none."""
        ...


@dataclass(frozen=True)
class TextDelta:
    index: int
    text: str


@dataclass(frozen=True)
class ChoiceFinished:
    index: int
    finish_reason: FinishReason
    completion_tokens: int
    tool_calls: list[dict] | None = None


GenerationEvent = TextDelta | ChoiceFinished


class Events(Protocol):
    """A generation's events, read by a thread (``for``) or a coroutine (``async for``).

    ``close()`` before the end says the reader went away: the generation stops at its next step.
    """

    def __iter__(self) -> Iterator[GenerationEvent]: ...

    def __next__(self) -> GenerationEvent: ...

    def __aiter__(self) -> AsyncIterator[GenerationEvent]: ...

    async def __anext__(self) -> GenerationEvent: ...

    def close(self) -> None: ...


@dataclass
class Generation:
    """A queued generation: the prompt is rendered and validated, events follow as tokens are sampled."""

    prompt_tokens: int
    events: Events


class ChatEngine(Protocol):
    """What ``request.app.state.inference`` must offer the chat router."""

    def generate(self, model: ResolvedModel, request: ChatRequest) -> Generation:
        """Validate and render the prompt (raising ``InvalidRequestError`` before any event), then queue it.

        Raises ``RateLimitError`` (429) when the model's queue is full. Sampling never runs in the caller's
        thread, so a slow or vanished reader holds nothing but its own request.
        """
        ...


def model_not_found(model: str) -> NotFoundError:
    return NotFoundError(
        f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found"
    )


class StaticModelResolver:
    """A fixed name -> weights table: the base models from settings, and tests."""

    def __init__(self, models: Mapping[str, ResolvedModel]) -> None:
        self._models = dict(models)

    def resolve(self, owner: Any, model: str) -> ResolvedModel:
        try:
            return self._models[model]
        except KeyError:
            raise model_not_found(model) from None
