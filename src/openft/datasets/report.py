"""The outcome of validating one file, how OpenAI words it for a failed job, and a table for the CLI."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from openft.datasets.examples import FORMAT_NAMES
from openft.datasets.problems import FORMAT_MISMATCH, Problem

# Problems kept in detail; beyond this they are only counted, so memory stays flat on huge bad files.
MAX_DETAILED_PROBLEMS = 100
# How many errors a job's error message lists before "and N more".
ERRORS_IN_MESSAGE = 3

Which = Literal["training", "validation"]


@dataclass(frozen=True)
class TokenStats:
    """Per-example token statistics; percentiles are nearest-rank over the exact counts."""

    n: int
    total: int
    min: int
    max: int
    mean: float
    p50: int
    p90: int
    p99: int

    @classmethod
    def from_counts(cls, counts: Sequence[int]) -> TokenStats | None:
        if not counts:
            return None
        # A histogram, not a sorted copy: a million examples have a few thousand distinct lengths,
        # so the memory stays small on the largest files.
        histogram = sorted(Counter(counts).items())
        n = len(counts)
        total = sum(length * times for length, times in histogram)

        def rank(q: float) -> int:
            wanted = max(1, math.ceil(q * n))
            seen = 0
            for length, times in histogram:
                seen += times
                if seen >= wanted:
                    return length
            return histogram[-1][0]

        return cls(n, total, histogram[0][0], histogram[-1][0], total / n, rank(0.50), rank(0.90), rank(0.99))


@dataclass
class ValidationReport:
    """Everything validation learnt about one file. ``errors``/``warnings`` hold the first
    ``MAX_DETAILED_PROBLEMS`` in detail; ``n_errors``/``n_warnings`` count them all."""

    method: str
    format: Literal["chat", "preference", "completion"] | None = None
    n_examples: int = 0
    n_lines: int = 0
    errors: list[Problem] = field(default_factory=list)
    n_errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)
    n_warnings: int = 0
    token_counts: array = field(default_factory=lambda: array("I"))
    max_tokens: int | None = None
    n_over_limit: int = 0
    billable_tokens: int = 0
    min_examples: int = 10

    @property
    def ok(self) -> bool:
        return self.n_errors == 0 and self.n_examples >= self.min_examples

    @property
    def token_stats(self) -> TokenStats | None:
        return TokenStats.from_counts(self.token_counts)

    def add_error(self, problem: Problem) -> None:
        self.n_errors += 1
        self.errors_by_kind[problem.kind] = self.errors_by_kind.get(problem.kind, 0) + 1
        if len(self.errors) < MAX_DETAILED_PROBLEMS:
            self.errors.append(problem)

    def error_code(self, param: str) -> str | None:
        """The job's ``error.code`` for this file given as ``param`` ("training_file" or
        "validation_file"), or None if the file is fine."""
        which = _which(param)
        if self.n_errors:
            return f"invalid_{which}_file"
        if self.n_examples < self.min_examples:
            # OpenAI only documents invalid_n_examples for the training file.
            return "invalid_n_examples" if which == "training" else "invalid_validation_file"
        return None

    def error_message(self, which: Which | str, file_id: str) -> str:
        """The job's ``error.message`` in OpenAI's words, listing the first few errors."""
        which = _which(which)
        if self.n_errors:
            shown = [
                p.describe().replace("Input file ", f"Input file {file_id} ", 1)
                if p.kind == FORMAT_MISMATCH
                else p.describe()
                for p in self.errors[:ERRORS_IN_MESSAGE]
            ]
            text = f"The job failed due to an invalid {which} file. Invalid file format. " + " ".join(shown)
            rest = self.n_errors - len(shown)
            if rest:
                text += f" And {rest} more error(s); run `openft validate` on the file to list them all."
            return text
        if self.n_examples < self.min_examples:
            return (
                f"{which.capitalize()} file has {self.n_examples} example(s), "
                f"but must have at least {self.min_examples} examples"
            )
        raise ValueError("the file is valid; there is no error message to give")


def _which(param: str) -> str:
    which = param.removesuffix("_file")
    if which not in ("training", "validation"):
        raise ValueError(f"expected 'training_file' or 'validation_file', got {param!r}")
    return which


def format_report(report: ValidationReport) -> str:
    """A human-readable summary for ``openft validate FILE``: errors by line and kind, warnings, tokens."""
    fmt = FORMAT_NAMES.get(report.format or "", "unknown")
    lines = [
        f"Format: {fmt} (method: {report.method})",
        f"Lines: {report.n_lines:,}   valid examples: {report.n_examples:,}   "
        f"errors: {report.n_errors:,}   warnings: {report.n_warnings:,}",
    ]
    if report.ok:
        lines.append("Result: OK")
    else:
        code = report.error_code("training_file")
        lines.append(f"Result: INVALID ({code})")
        if not report.n_errors:
            lines.append("  " + report.error_message("training", "FILE"))
    if report.n_errors:
        by_kind = ", ".join(f"{kind} {n:,}" for kind, n in sorted(report.errors_by_kind.items()))
        lines += ["", f"Errors by kind: {by_kind}"]
        shown = (
            f"first {len(report.errors)} of {report.n_errors:,}"
            if report.n_errors > len(report.errors)
            else "all"
        )
        lines.append(f"Errors ({shown}):")
        lines += _table(report.errors)
    if report.warnings:
        lines += ["", "Warnings:"]
        lines += _table(report.warnings)
    stats = report.token_stats
    if stats is not None:
        lines += [
            "",
            f"Tokens per example ({stats.n:,} examples): min {stats.min:,}  p50 {stats.p50:,}  p90 {stats.p90:,}  "
            f"p99 {stats.p99:,}  max {stats.max:,}  mean {stats.mean:,.1f}",
        ]
        limit = f"{report.max_tokens:,}" if report.max_tokens is not None else "none"
        lines.append(
            f"Over max_tokens ({limit}): {report.n_over_limit:,} (truncated in training)   "
            f"billable tokens per epoch: {report.billable_tokens:,}"
        )
    return "\n".join(lines)


def _table(problems: list[Problem]) -> list[str]:
    rows = [
        (
            str(p.line) if p.line else "-",
            str(p.message_index) if p.message_index is not None else "-",
            p.kind,
            p.field or "-",
            p.describe(),
        )
        for p in problems
    ]
    header = ("LINE", "MSG", "KIND", "FIELD", "PROBLEM")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in [header, *rows]
    ]
