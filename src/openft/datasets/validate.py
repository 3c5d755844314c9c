"""Validates a training file in one streaming pass, and yields its normalised examples for the trainer."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from openft.datasets import problems as p
from openft.datasets.examples import (
    FORMAT_NAMES,
    METHOD_FORMATS,
    Format,
    Method,
    check_example,
    describe_unknown_format,
    detect_format,
    mismatch_message,
)
from openft.datasets.lines import read_lines
from openft.datasets.problems import DatasetError, ExampleFindings, Problem
from openft.datasets.report import MAX_DETAILED_PROBLEMS, ValidationReport

DEFAULT_MIN_EXAMPLES = 10
# Large enough for any text example a small model can train on; an embedded image or a whole book
# on one line is refused with a clear message instead of being held in memory.
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

# Valid examples are counted in batches, so a fast tokenizer encodes many at once (in Rust, on all
# cores). A batch ends at this many lines or bytes read, which bounds the memory it holds and how
# long ``should_stop`` goes unasked.
BATCH_LINES = 256
BATCH_BYTES = 4 * 1024 * 1024

Source = str | os.PathLike[str] | BinaryIO


class TokenCounter(Protocol):
    """Counts many normalised examples in one call, in order.

    Each result is the example's token count, or a sentence saying why the base model cannot
    tokenize that example (its chat template refuses it); that becomes an error on its line.
    """

    def count_many(self, examples: Sequence[dict]) -> Sequence[int | str]: ...


class ValidationStopped(Exception):
    """``should_stop`` returned True: the job was cancelled, or another worker owns it now."""

    def __init__(self, line: int) -> None:
        super().__init__(f"validation stopped on request after line {line:,}")
        self.line = line


@dataclass(frozen=True)
class _Event:
    """One step of the scan: a valid example, or findings for a line (possibly with an example)."""

    line: int
    example: dict | None
    errors: tuple[Problem, ...] | list[Problem] = ()
    warnings: tuple[Problem, ...] | list[Problem] = ()
    format: Format | None = None
    size: int = 0


def validate_file(
    source: Source,
    *,
    method: Method,
    count_tokens: Callable[[dict], int] | TokenCounter | None = None,
    max_tokens: int | None = None,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    should_stop: Callable[[], bool] | None = None,
) -> ValidationReport:
    """Check every line of ``source`` (a path or a binary stream) against ``method``'s format.

    ``count_tokens`` counts the normalised valid examples: a ``TokenCounter`` gets them in batches,
    a plain callable one at a time. ``max_tokens`` is the per-example training length (longer
    examples are truncated, warned about, and billed at ``max_tokens``). ``should_stop`` is asked
    after each batch (every few hundred lines or few MB); when it returns True, ``ValidationStopped``
    is raised.
    """
    report = ValidationReport(method=method, max_tokens=max_tokens, min_examples=min_examples)
    counter = count_tokens
    if count_tokens is not None and not hasattr(count_tokens, "count_many"):
        counter = _OneByOne(count_tokens)
    # Warnings repeat on thousands of lines; keep one per (kind, message) with a count and first line.
    tally: dict[tuple[str, str], list] = {}

    def warn(problem: Problem) -> None:
        report.n_warnings += 1
        key = (problem.kind, problem.message)
        if key in tally:
            tally[key][1] += 1
        elif len(tally) < MAX_DETAILED_PROBLEMS:
            tally[key] = [problem, 1]

    def record(event: _Event, count: int | str | None) -> None:
        report.n_lines = event.line
        if event.format is not None:
            report.format = event.format
        for problem in event.errors:
            report.add_error(problem)
        for problem in event.warnings:
            warn(problem)
        if event.example is None:
            return
        if isinstance(count, str):
            report.add_error(Problem(event.line, None, None, count, p.TEMPLATE))
            return
        report.n_examples += 1
        if count is None:
            return
        report.token_counts.append(count)
        if max_tokens is not None and count > max_tokens:
            report.n_over_limit += 1
            warn(
                Problem(
                    event.line,
                    None,
                    None,
                    f"the example is longer than max_tokens={max_tokens:,} tokens; its end will be truncated in training",
                    p.OVER_MAX_TOKENS,
                )
            )
        report.billable_tokens += count if max_tokens is None else min(count, max_tokens)

    def flush(batch: list[_Event]) -> None:
        # Events are recorded in file order after the batch is counted, so the report is the same
        # whatever the batch size.
        examples = [event.example for event in batch if event.example is not None]
        counts = iter(counter.count_many(examples) if counter is not None and examples else ())
        for event in batch:
            record(event, next(counts, None) if event.example is not None else None)

    batch: list[_Event] = []
    batch_bytes = 0
    with _open(source) as stream:
        for event in _scan(stream, method=method, max_line_bytes=max_line_bytes):
            batch.append(event)
            batch_bytes += event.size
            if len(batch) < BATCH_LINES and batch_bytes < BATCH_BYTES:
                continue
            flush(batch)
            batch, batch_bytes = [], 0
            if should_stop is not None and should_stop():
                raise ValidationStopped(report.n_lines)
        flush(batch)
    if report.n_lines == 0:
        report.add_error(
            Problem(0, None, None, "The file is empty; it must hold at least one example per line.", p.EMPTY)
        )
    elif report.n_examples == 0 and report.n_errors == 0:
        report.add_error(
            Problem(0, None, None, "The file holds only blank lines; it has no examples.", p.EMPTY)
        )
    report.warnings = [_counted(problem, n) for problem, n in tally.values()]
    return report


def iter_examples(
    source: Source, *, method: Method, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, normalised_example)`` for a file that passed ``validate_file``.

    Raises ``DatasetError`` at the first error: the file changed, or it was never validated.
    """
    with _open(source) as stream:
        for event in _scan(stream, method=method, max_line_bytes=max_line_bytes):
            if event.errors:
                raise DatasetError(event.errors[0])
            if event.example is not None:
                yield event.line, event.example


def _scan(stream: BinaryIO, *, method: str, max_line_bytes: int) -> Iterator[_Event]:
    if method not in METHOD_FORMATS:
        raise ValueError(f"method must be one of {', '.join(METHOD_FORMATS)}, got {method!r}")
    file_format: Format | None = None
    first_line = 0
    for line in read_lines(stream, max_line_bytes=max_line_bytes):
        if line.value is None:
            yield _Event(line.number, None, line.errors, line.warnings, size=line.size)
            continue
        fmt = detect_format(line.value, method)
        found = ExampleFindings(line.number, warnings=list(line.warnings))
        if fmt is None:
            found.error(describe_unknown_format(line.value), kind=p.FORMAT)
            yield _Event(line.number, None, found.errors, found.warnings, size=line.size)
            continue
        if file_format is None:
            file_format, first_line = fmt, line.number
            if fmt not in METHOD_FORMATS[method]:
                # The whole file is the wrong kind: one error, not one per line.
                found.error(mismatch_message(fmt, method), kind=p.FORMAT_MISMATCH)
                yield _Event(line.number, None, found.errors, found.warnings, format=fmt, size=line.size)
                return
        elif fmt != file_format:
            found.error(
                f"the example is in the {FORMAT_NAMES[fmt]} format, but the file's first example (line {first_line}) is in the "
                f"{FORMAT_NAMES[file_format]} format; a file must use one format throughout",
                kind=p.FORMAT,
            )
            yield _Event(line.number, None, found.errors, found.warnings, size=line.size)
            continue
        example = check_example(line.value, fmt, found)
        yield _Event(line.number, example, found.errors, found.warnings, format=fmt, size=line.size)


def _counted(problem: Problem, n: int) -> Problem:
    if n == 1:
        return problem
    where = "lines" if problem.kind in p.LINE_KINDS else "examples"
    return Problem(
        problem.line,
        problem.message_index,
        problem.field,
        f"{problem.message} ({n:,} {where}, first at line {problem.line})",
        problem.kind,
    )


class _OneByOne:
    """A per-example counting callable as a ``TokenCounter``."""

    def __init__(self, count: Callable[[dict], int]) -> None:
        self.count = count

    def count_many(self, examples: Sequence[dict]) -> list[int]:
        return [self.count(example) for example in examples]


@contextlib.contextmanager
def _open(source: Source) -> Iterator[BinaryIO]:
    if hasattr(source, "readline"):
        yield source  # the caller owns the stream and closes it
        return
    with open(source, "rb") as stream:
        yield stream
