"""OpenAI's chat.completion and chat.completion.chunk objects, built from generation events."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from openft import __version__ as openft_version
from openft.ids import chat_completion_id
from openft.serving.protocols import ChoiceFinished, Generation, TextDelta


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


def completion(model: str, generation: Generation) -> dict:
    """Drain a generation into one chat.completion object."""
    choices: dict[int, _Choice] = {}
    for event in generation.events:
        choice = choices.setdefault(event.index, _Choice())
        if isinstance(event, TextDelta):
            choice.text.append(event.text)
        else:
            choice.finished = event
    return {
        "id": chat_completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice_object(index, choices[index]) for index in sorted(choices)],
        "usage": usage(
            generation.prompt_tokens,
            sum(c.finished.completion_tokens for c in choices.values() if c.finished is not None),
        ),
        "service_tier": "default",
        "system_fingerprint": system_fingerprint(),
    }


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


def chunks(model: str, generation: Generation, *, include_usage: bool) -> Iterator[dict]:
    """chat.completion.chunk objects: the role first, then content deltas, then each choice's finish."""
    base = {
        "id": chat_completion_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "service_tier": "default",
        "system_fingerprint": system_fingerprint(),
    }

    def chunk(index: int, delta: dict, finish_reason: str | None = None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice], **({"usage": None} if include_usage else {})}

    started: set[int] = set()
    completion_tokens = 0
    for event in generation.events:
        if event.index not in started:
            started.add(event.index)
            yield chunk(event.index, {"role": "assistant", "content": "", "refusal": None})
        if isinstance(event, TextDelta):
            if event.text:
                yield chunk(event.index, {"content": event.text})
            continue
        completion_tokens += event.completion_tokens
        if event.tool_calls:
            calls = [{"index": i, **call} for i, call in enumerate(event.tool_calls)]
            yield chunk(event.index, {"tool_calls": calls})
        yield chunk(event.index, {}, event.finish_reason)
    if include_usage:
        yield {**base, "choices": [], "usage": usage(generation.prompt_tokens, completion_tokens)}


def server_sent_events(objects: Iterator[dict]) -> Iterator[bytes]:
    for obj in objects:
        yield f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()
    yield b"data: [DONE]\n\n"
