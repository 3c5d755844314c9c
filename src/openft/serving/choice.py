"""One choice's sampled tokens turned into events: text released as it completes, cut at stop sequences,
tool calls held back and parsed, and the finish with its reason and exact token count.

Both engines feed it token by token (openft's batch loop from its sampler, the vLLM engine from vLLM's
outputs), so text, stops, tool calls, ``finish_reason`` and ``usage`` mean the same whichever serves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from openft.serving.protocols import ChoiceFinished, FinishReason, GenerationEvent, TextDelta
from openft.serving.text import IncrementalDecoder, StopMatcher
from openft.serving.tools import TOOL_CALL_OPEN, parse_tool_calls


class ChoiceText:
    def __init__(
        self,
        index: int,
        tokenizer: Any,
        *,
        stop: tuple[str, ...],
        tools: bool,
        eos_ids: frozenset[int],
        max_tokens: int,
    ) -> None:
        self.index = index
        self.stop = stop
        self.eos_ids = eos_ids
        self.max_tokens = max_tokens
        self.decoder = IncrementalDecoder(tokenizer)
        # With tools, "<tool_call>" ends the content; the rest is held back and parsed into tool_calls.
        self.matcher = StopMatcher(stop + ((TOOL_CALL_OPEN,) if tools else ()))
        self.calls: list[str] | None = None
        self.count = 0
        self.done = False

    def accept(self, token: int) -> list[GenerationEvent]:
        """The events one more sampled token makes; ``done`` is set once the choice has finished."""
        self.count += 1
        if token in self.eos_ids:
            return self.finish("stop")
        text, hit_stop = self.matcher.push(self.decoder.push(token))
        events: list[GenerationEvent] = []
        if self.calls is not None:
            self.calls.append(text)
        elif text:
            events.append(TextDelta(self.index, text))
        if hit_stop and self.matcher.matched == TOOL_CALL_OPEN and self.calls is None:
            self.calls = [TOOL_CALL_OPEN]
            self.matcher = StopMatcher(self.stop)
        elif hit_stop:
            events.extend(self._final("stop", flush=False))
            return events
        if self.count >= self.max_tokens:
            events.extend(self.finish("length"))
        return events

    def finish(self, reason: FinishReason) -> list[GenerationEvent]:
        """End the choice here (the limit, an end-of-turn token, or the engine saying it ended)."""
        return list(self._final(reason, flush=True))

    def _final(self, reason: FinishReason, *, flush: bool) -> Iterator[GenerationEvent]:
        self.done = True
        text, hit_stop = self.matcher.push(self.decoder.flush()) if flush else ("", False)
        text = text if hit_stop else text + self.matcher.flush()
        if self.calls is not None:
            self.calls.append(text)
            tool_calls = parse_tool_calls("".join(self.calls))
            if tool_calls:
                yield ChoiceFinished(self.index, "tool_calls", self.count, tool_calls)
                return
            text = "".join(self.calls)  # not a well-formed call: it is content after all
        if text:
            yield TextDelta(self.index, text)
        yield ChoiceFinished(self.index, "stop" if hit_stop else reason, self.count)
