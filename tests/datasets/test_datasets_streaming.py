"""Validation streams: bounded reads, long lines capped and skipped, big files in flat memory."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest
from dataset_rows import chat, encode

from openft.datasets import DatasetError, ValidationStopped, iter_examples, validate_file
from openft.datasets.validate import BATCH_LINES


class ReadlineOnly(io.RawIOBase):
    """A binary stream that refuses whole-file reads and records the largest read it was asked for."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)
        self.largest = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        assert size is not None and size >= 0, "the validator must never read the whole file"
        self.largest = max(self.largest, size)
        return self._inner.read(size)

    def readline(self, size: int | None = -1) -> bytes:
        assert size is not None and size >= 0, "the validator must cap every line it reads"
        self.largest = max(self.largest, size)
        return self._inner.readline(size)


def test_validate_line_over_max_line_bytes_is_reported_and_skipped_in_bounded_reads():
    huge = {
        "messages": [{"role": "user", "content": "x" * 3_000_000}, {"role": "assistant", "content": "ok"}]
    }
    data = encode([chat(i) for i in range(5)] + [huge] + [chat(i) for i in range(5)])
    stream = ReadlineOnly(data)

    report = validate_file(stream, method="supervised", max_line_bytes=1_000_000)

    assert stream.largest <= 1_000_001
    assert report.n_examples == 10 and report.n_errors == 1
    [error] = report.errors
    assert (error.line, error.kind) == (6, "line_too_long")
    assert (
        f"Line 6 is {len(json.dumps(huge)):,} bytes long, over the limit of 1,000,000 bytes"
        in error.describe()
    )


def test_validate_multi_megabyte_line_under_the_limit_is_a_valid_example(write_jsonl):
    long_reply = {
        "messages": [
            {"role": "user", "content": "summarise"},
            {"role": "assistant", "content": "y" * 4_000_000},
        ]
    }
    path = write_jsonl([long_reply] + [chat(i) for i in range(9)])

    report = validate_file(path, method="supervised", count_tokens=lambda e: 7)

    assert report.ok and report.n_examples == 10


def test_validate_skipping_a_long_line_keeps_memory_far_below_its_size(write_jsonl):
    path = write_jsonl([chat(i) for i in range(10)] + ['{"prompt": "' + "z" * 20_000_000 + '"}'])

    tracemalloc.start()
    try:
        report = validate_file(path, method="supervised", max_line_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert report.errors[0].kind == "line_too_long" and report.n_examples == 10
    assert peak < 5_000_000, f"peak {peak:,} bytes while skipping a 20 MB line"


def test_validate_fifty_thousand_lines_streams_without_whole_file_reads():
    rows = [chat(i) for i in range(50_000)]
    rows[41_999] = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]
    }
    stream = ReadlineOnly(encode(rows))

    report = validate_file(stream, method="supervised", count_tokens=lambda e: 12, max_tokens=10)

    assert stream.largest <= 16 * 1024 * 1024 + 1
    assert (report.n_lines, report.n_examples, report.n_errors) == (50_000, 49_999, 1)
    assert (report.errors[0].line, report.errors[0].message_index) == (42_000, 2)
    assert report.token_counts.itemsize == 4 and len(report.token_counts) == 49_999
    assert report.n_over_limit == 49_999 and report.billable_tokens == 10 * 49_999
    [over] = [w for w in report.warnings if w.kind == "over_max_tokens"]
    assert "49,999 examples, first at line 1" in over.message


def test_iter_examples_yields_line_numbers_and_stops_at_a_bad_line(write_jsonl):
    path = write_jsonl([chat(0), "", chat(1), '{"messages": [{"role": "user"}]}', chat(2)])

    seen = []
    with pytest.raises(DatasetError, match="Example 4, message 1") as raised:
        for line, example in iter_examples(path, method="supervised"):
            seen.append((line, example["messages"][1]["content"]))

    assert seen == [(1, "What is 0 + 1?"), (3, "What is 1 + 1?")]
    assert raised.value.problem.field == "messages[0].content"


class GeneratedJsonl(io.RawIOBase):
    """``n`` chat lines made as they are read, so the file itself never sits in the test's memory."""

    def __init__(self, n: int, reply_words: int = 80) -> None:
        self.n = n
        self.served = 0
        self.reply = " ".join(["word"] * reply_words)
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> bytes:
        assert size is not None and size >= 0, "the validator must cap every line it reads"
        if not self.pending and self.served < self.n:
            row = chat(self.served)
            row["messages"][2]["content"] = f"{self.served} {self.reply}"
            self.pending = json.dumps(row).encode() + b"\n"
            self.served += 1
        line, self.pending = self.pending[:size], self.pending[size:]
        return line


class CountingCounter:
    """A ``TokenCounter`` that records the batches it is given; counts are message lengths."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def count_many(self, examples):
        self.batches.append(len(examples))
        return [sum(len(m["content"] or "") for m in e["messages"]) for e in examples]


def test_validate_memory_stays_flat_on_a_large_generated_file():
    n = 8_000
    stream = GeneratedJsonl(n, reply_words=500)
    counter = CountingCounter()

    tracemalloc.start()
    try:
        report = validate_file(stream, method="supervised", count_tokens=counter, max_tokens=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    size = sum(len(json.dumps(chat(i))) + 1 + len(stream.reply) + 1 for i in range(n))
    assert report.ok and report.n_examples == n and len(report.token_counts) == n
    assert max(counter.batches) <= BATCH_LINES and sum(counter.batches) == n
    # Measured: about 1.1 MB (a batch of parsed examples and the token counts) for 21 MB.
    assert peak < 3_000_000, f"peak {peak:,} bytes while validating a {size:,}-byte file"


class RefusingCounter(CountingCounter):
    """Refuses examples whose user message mentions a multiple of 97, as a chat template can."""

    def count_many(self, examples):
        counts = super().count_many(examples)
        questions = [next(m["content"] for m in e["messages"] if m["role"] == "user") for e in examples]
        return [
            "the chat template refuses it" if q.startswith("What") and int(q.split()[2]) % 97 == 0 else n
            for q, n in zip(questions, counts, strict=True)
        ]


def _mixed_rows(n: int) -> list:
    rows: list = []
    for i in range(n):
        if i % 41 == 5:
            rows.append("{broken")
        elif i % 53 == 7:
            rows.append("")
        elif i % 61 == 3:
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a", "weight": 3},
                    ]
                }
            )
        else:
            rows.append(chat(i) if i % 2 else {"messages": chat(i)["messages"][1:]})  # half warn: no system
    return rows


def test_validate_report_is_the_same_whatever_the_batch_size(write_jsonl, monkeypatch):
    path = write_jsonl(_mixed_rows(3 * BATCH_LINES + 11))
    batched = validate_file(path, method="supervised", count_tokens=RefusingCounter(), max_tokens=30)
    monkeypatch.setattr("openft.datasets.validate.BATCH_LINES", 1)
    one_by_one = validate_file(path, method="supervised", count_tokens=RefusingCounter(), max_tokens=30)

    assert batched == one_by_one
    assert {"json", "schema", "template"} <= set(batched.errors_by_kind)
    assert [e.line for e in batched.errors] == sorted(e.line for e in batched.errors)
    refused = [e for e in batched.errors if e.kind == "template"]
    assert refused[0].describe() == f"Example {refused[0].line}: the chat template refuses it."
    assert batched.n_examples == len(batched.token_counts)


def test_validate_stops_after_the_batch_in_which_should_stop_turns_true(write_jsonl):
    path = write_jsonl([chat(i) for i in range(10 * BATCH_LINES)])
    counter = CountingCounter()
    asked = []

    def should_stop() -> bool:
        asked.append(len(counter.batches))
        return len(asked) == 2

    with pytest.raises(ValidationStopped) as stopped:
        validate_file(path, method="supervised", count_tokens=counter, should_stop=should_stop)

    assert counter.batches == [BATCH_LINES, BATCH_LINES]
    assert stopped.value.line == 2 * BATCH_LINES
