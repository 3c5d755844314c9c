"""OpenAI's chat.completion and chat.completion.chunk objects, built from generation events."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from openft import __version__ as openft_version
from openft.ids import chat_completion_id
from openft.serving.protocols import ChoiceFinished, Generation, GenerationEvent, TextDelta


def system_fingerprint() -> str:
    """Changes when the serving code changes, so callers relying on `seed` can notice."""
    return "fp_" + hashlib.sha256(f"openft-{openft_version}".encode()).hexdigest()[:10]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    finished: ChoiceFinished | None = None


class _CompletionBuilder:
    """Collects a generation's events into one chat.completion object."""

    def __init__(self, model: str, generation: Generation) -> None:
        self.model = model
        self.generation = generation
        self.choices: dict[int, _Choice] = {}

    def add(self, event: GenerationEvent) -> None:
        choice = self.choices.setdefault(event.index, _Choice())
        if isinstance(event, TextDelta):
            choice.text.append(event.text)
        else:
            choice.finished = event

    def build(self) -> dict:
        choices = self.choices
        return {
            "id": chat_completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [_choice_object(index, choices[index]) for index in sorted(choices)],
            "usage": usage(
                self.generation.prompt_tokens,
                sum(c.finished.completion_tokens for c in choices.values() if c.finished is not None),
            ),
            "service_tier": "default",
            "system_fingerprint": system_fingerprint(),
        }


def completion(model: str, generation: Generation) -> dict:
    """Drain a generation into one chat.completion object."""
    builder = _CompletionBuilder(model, generation)
    for event in generation.events:
        builder.add(event)
    return builder.build()


async def acompletion(model: str, generation: Generation) -> dict:
    """``completion`` for a coroutine: waits for events without holding a thread."""
    builder = _CompletionBuilder(model, generation)
    async for event in generation.events:
        builder.add(event)
    return builder.build()


def _choice_object(index: int, choice: _Choice) -> dict:
    finished = choice.finished
    message: dict = {"role": "assistant", "content": "".join(choice.text), "refusal": None, "annotations": []}
    if finished is not None and finished.tool_calls:
        message["tool_calls"] = finished.tool_calls
        message["content"] = message["content"] or None
    return {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": finished.finish_reason if finished is not None else "length",
    }


class _ChunkWriter:
    """chat.completion.chunk objects: the role first, then content deltas, then each choice's finish."""

    def __init__(self, model: str, generation: Generation, *, include_usage: bool) -> None:
        self.generation = generation
        self.include_usage = include_usage
        self.base = {
            "id": chat_completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "service_tier": "default",
            "system_fingerprint": system_fingerprint(),
        }
        self.started: set[int] = set()
        self.completion_tokens = 0

    def _chunk(self, index: int, delta: dict, finish_reason: str | None = None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self.base, "choices": [choice], **({"usage": None} if self.include_usage else {})}

    def write(self, event: GenerationEvent) -> list[dict]:
        out = []
        if event.index not in self.started:
            self.started.add(event.index)
            out.append(self._chunk(event.index, {"role": "assistant", "content": "", "refusal": None}))
        if isinstance(event, TextDelta):
            if event.text:
                out.append(self._chunk(event.index, {"content": event.text}))
            return out
        self.completion_tokens += event.completion_tokens
        if event.tool_calls:
            calls = [{"index": i, **call} for i, call in enumerate(event.tool_calls)]
            out.append(self._chunk(event.index, {"tool_calls": calls}))
        out.append(self._chunk(event.index, {}, event.finish_reason))
        return out

    def end(self) -> list[dict]:
        if not self.include_usage:
            return []
        return [
            {
                **self.base,
                "choices": [],
                "usage": usage(self.generation.prompt_tokens, self.completion_tokens),
            }
        ]


def chunks(model: str, generation: Generation, *, include_usage: bool) -> Iterator[dict]:
    """chat.completion.chunk objects: the role first, then content deltas, then each choice's finish."""
    writer = _ChunkWriter(model, generation, include_usage=include_usage)
    try:
        for event in generation.events:
            yield from writer.write(event)
    finally:
        generation.events.close()  # a reader that stops early cancels the generation
    yield from writer.end()


async def achunks(model: str, generation: Generation, *, include_usage: bool) -> AsyncIterator[dict]:
    """``chunks`` for a coroutine; if the reader goes away (the task is cancelled), the generation stops."""
    writer = _ChunkWriter(model, generation, include_usage=include_usage)
    try:
        async for event in generation.events:
            for chunk in writer.write(event):
                yield chunk
    finally:
        generation.events.close()
    for chunk in writer.end():
        yield chunk


def server_sent_events(objects: Iterator[dict]) -> Iterator[bytes]:
    for obj in objects:
        yield _event(obj)
    yield b"data: [DONE]\n\n"


async def aserver_sent_events(objects: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    async for obj in objects:
        yield _event(obj)
    yield b"data: [DONE]\n\n"


def _event(obj: dict) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()
