"""Sampled tokens to released text, incrementally: multi-byte-safe detokenizing and stop sequences that span tokens."""

from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDecoder:
    """Releases the text of each new token once it is complete.

    Decoding token by token breaks characters split across byte-level tokens (a lone byte decodes to
    U+FFFD) and drops sentencepiece's leading spaces, so each step decodes a short window of recent tokens
    and releases only what grew past the previous window (the prefix/read offsets of TGI and vLLM).
    """

    def __init__(self, tokenizer: Decoder) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix = self._decode(self._prefix_offset, self._read_offset)
        text = self._decode(self._prefix_offset, len(self._ids))
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end stays U+FFFD)."""
        prefix = self._decode(self._prefix_offset, self._read_offset)
        text = self._decode(self._prefix_offset, len(self._ids))
        self._prefix_offset = self._read_offset = len(self._ids)
        return text[len(prefix) :]

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=True)


class StopMatcher:
    """Cuts the text at the first stop sequence, which itself is never released.

    Text that could still be the start of a stop sequence is held back until the next piece decides it,
    so a stop that spans several tokens is found and never half-released.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._pending = ""
        self.matched: str | None = None

    def push(self, text: str) -> tuple[str, bool]:
        """Return (text safe to release, whether a stop sequence was hit)."""
        buffer = self._pending + text
        hits = [(i, stop) for stop in self._stops if (i := buffer.find(stop)) >= 0]
        if hits:
            at, self.matched = min(hits)
            self._pending = ""
            return buffer[:at], True
        hold = max((self._partial_stop_length(buffer, stop) for stop in self._stops), default=0)
        self._pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return pending

    @staticmethod
    def _partial_stop_length(buffer: str, stop: str) -> int:
        for k in range(min(len(stop) - 1, len(buffer)), 0, -1):
            if buffer.endswith(stop[:k]):
                return k
        return 0
