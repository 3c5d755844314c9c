"""Validates a training file in one streaming pass, and yields its normalised examples for the trainer."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

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

Source = str | os.PathLike[str] | BinaryIO


@dataclass(frozen=True)
class _Event:
    """One step of the scan: a valid example, or findings for a line (possibly with an example)."""

    line: int
    example: dict | None
    errors: tuple[Problem, ...] | list[Problem] = ()
    warnings: tuple[Problem, ...] | list[Problem] = ()
    format: Format | None = None


def validate_file(
    source: Source,
    *,
    method: Method,
    count_tokens: Callable[[dict], int] | None = None,
    max_tokens: int | None = None,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> ValidationReport:
    """Check every line of ``source`` (a path or a binary stream) against ``method``'s format.

    ``count_tokens`` is called once per valid example with the normalised example; ``max_tokens``
    is the per-example training length (longer examples are truncated, warned about, and billed at
    ``max_tokens``).
    """
    report = ValidationReport(method=method, max_tokens=max_tokens, min_examples=min_examples)
    # Warnings repeat on thousands of lines; keep one per (kind, message) with a count and first line.
    tally: dict[tuple[str, str], list] = {}

    def warn(problem: Problem) -> None:
        report.n_warnings += 1
        key = (problem.kind, problem.message)
        if key in tally:
            tally[key][1] += 1
        elif len(tally) < MAX_DETAILED_PROBLEMS:
            tally[key] = [problem, 1]

    with _open(source) as stream:
        for event in _scan(stream, method=method, max_line_bytes=max_line_bytes):
            report.n_lines = event.line
            if event.format is not None:
                report.format = event.format
            for problem in event.errors:
                report.add_error(problem)
            for problem in event.warnings:
                warn(problem)
            if event.example is None:
                continue
            report.n_examples += 1
            if count_tokens is None:
                continue
            n = count_tokens(event.example)
            report.token_counts.append(n)
            if max_tokens is not None and n > max_tokens:
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
            report.billable_tokens += n if max_tokens is None else min(n, max_tokens)
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
            yield _Event(line.number, None, line.errors, line.warnings)
            continue
        fmt = detect_format(line.value, method)
        found = ExampleFindings(line.number, warnings=list(line.warnings))
        if fmt is None:
            found.error(describe_unknown_format(line.value), kind=p.FORMAT)
            yield _Event(line.number, None, found.errors, found.warnings)
            continue
        if file_format is None:
            file_format, first_line = fmt, line.number
            if fmt not in METHOD_FORMATS[method]:
                # The whole file is the wrong kind: one error, not one per line.
                found.error(mismatch_message(fmt, method), kind=p.FORMAT_MISMATCH)
                yield _Event(line.number, None, found.errors, found.warnings, format=fmt)
                return
        elif fmt != file_format:
            found.error(
                f"the example is in the {FORMAT_NAMES[fmt]} format, but the file's first example (line {first_line}) is in the "
                f"{FORMAT_NAMES[file_format]} format; a file must use one format throughout",
                kind=p.FORMAT,
            )
            yield _Event(line.number, None, found.errors, found.warnings)
            continue
        example = check_example(line.value, fmt, found)
        yield _Event(line.number, example, found.errors, found.warnings, format=fmt)


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


@contextlib.contextmanager
def _open(source: Source) -> Iterator[BinaryIO]:
    if hasattr(source, "readline"):
        yield source  # the caller owns the stream and closes it
        return
    with open(source, "rb") as stream:
        yield stream
