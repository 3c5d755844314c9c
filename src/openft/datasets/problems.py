"""What the validator can find wrong with a training file: one Problem per finding, in the user's words."""

from __future__ import annotations

from dataclasses import dataclass, field

# Kinds of problem. Line-level kinds describe the raw line (before it is an example); file-level
# kinds describe the file as a whole and are shown without a location.
ENCODING = "encoding"
BOM = "bom"
BLANK_LINE = "blank_line"
LINE_TOO_LONG = "line_too_long"
TRUNCATED = "truncated"
JSON = "json"
NOT_OBJECT = "not_object"
NOT_JSONL = "not_jsonl"
EMPTY = "empty"
FORMAT = "format"
FORMAT_MISMATCH = "format_mismatch"
SCHEMA = "schema"
UNKNOWN_KEY = "unknown_key"
MISSING_ROLE = "missing_role"
OVER_MAX_TOKENS = "over_max_tokens"
TEMPLATE = "template"  # the base model's chat template cannot render or mask the example

LINE_KINDS = frozenset({ENCODING, BOM, BLANK_LINE, LINE_TOO_LONG, TRUNCATED, JSON, NOT_OBJECT})
FILE_KINDS = frozenset({NOT_JSONL, EMPTY, FORMAT_MISMATCH})


@dataclass(frozen=True)
class Problem:
    """One finding. ``line`` is 1-based (0: the file as a whole); ``message_index`` is 1-based.

    ``field`` is a JSON path from the example's root with 0-based list positions, such as
    ``messages[1].weight`` (programmer-facing; the user-facing text uses ``message_index``).
    For line-level kinds ``message`` is a predicate ("is not valid JSON: ..."), read after "Line N".
    """

    line: int
    message_index: int | None
    field: str | None
    message: str
    kind: str = SCHEMA

    def describe(self) -> str:
        """The finding as a sentence, located the way OpenAI does: "Example 3, message 2: ..."."""
        if self.kind in FILE_KINDS or self.line == 0:
            text = self.message
        elif self.kind in LINE_KINDS:
            text = f"Line {self.line} {self.message}"
        elif self.message_index is not None:
            text = f"Example {self.line}, message {self.message_index}: {self.message}"
        elif self.field is not None:
            text = f"Example {self.line}, {self.field}: {self.message}"
        else:
            text = f"Example {self.line}: {self.message}"
        return text if text.endswith((".", "?", "!")) else text + "."


class DatasetError(ValueError):
    """Raised by ``iter_examples`` when the file holds a problem that validation should have refused."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.describe())
        self.problem = problem


@dataclass
class ExampleFindings:
    """Collects the problems of one line while it is checked; the checks never raise."""

    line: int
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(
        self, message: str, *, message_index: int | None = None, field: str | None = None, kind: str = SCHEMA
    ) -> None:
        self.errors.append(Problem(self.line, message_index, field, message, kind))

    def warn(
        self, message: str, *, message_index: int | None = None, field: str | None = None, kind: str = SCHEMA
    ) -> None:
        self.warnings.append(Problem(self.line, message_index, field, message, kind))


def json_type(value: object) -> str:
    """The JSON name of a parsed value, with its article, for messages like "got a number"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
