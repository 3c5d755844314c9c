"""Streaming validation and normalisation of fine-tuning files (chat, preference, completion JSONL).

Standard library only. The API's ``validating_files`` phase and ``openft validate FILE`` call the
same function::

    report = validate_file(path_or_binary_stream, method="supervised" | "dpo",
                           count_tokens=None,          # a TokenCounter (count_many(examples), given
                                                       # the normalised valid examples in batches), or
                                                       # Callable[[dict], int] called once per example
                           max_tokens=None,            # per-example training length (truncation)
                           min_examples=10, max_line_bytes=DEFAULT_MAX_LINE_BYTES,
                           should_stop=None)           # Callable[[], bool], asked after every batch of
                                                       # lines; True raises ValidationStopped
    report.ok                                    # no errors and at least min_examples examples
    report.error_code("training_file")           # invalid_training_file | invalid_n_examples | None
    report.error_code("validation_file")         # invalid_validation_file | None
    report.error_message("training", file_id)    # OpenAI's wording, first 3 errors, "and N more"
    report.format, report.n_examples, report.errors, report.n_errors, report.warnings,
    report.token_counts (array('I')), report.token_stats (TokenStats | None),
    report.n_over_limit, report.billable_tokens  # sum(min(max_tokens, n_i)), as OpenAI bills
    format_report(report) -> str                 # the CLI's table of errors, warnings and tokens

    for line_number, example in iter_examples(path, method="supervised"):  # for the trainer
        ...                                      # normalised examples; DatasetError on a bad line

Formats and methods: ``supervised`` accepts chat (``messages``) and completion (``prompt``/
``completion``) files; ``dpo`` accepts preference files (``input`` + ``preferred_output``/
``non_preferred_output``, or the API reference's ``preferred_completion``/``non_preferred_completion``,
normalised to the ``_output`` spelling). The first example decides the file's format; a file in the
wrong format for the method is one error in OpenAI's wording. Normalised shapes are described in
``openft.datasets.examples`` and ``openft.datasets.messages``.

File-level policies: the file is read line by line with a length cap (``max_line_bytes``), never
whole. A UTF-8 BOM at the start of the file is accepted with a warning (one mid-file is an error).
Blank lines are skipped with a warning, but a file with no examples is an error. CRLF line endings
are accepted. A last line that is not valid JSON and has no newline is reported as truncated. A
file whose first line shows it is not JSONL (a JSON array, pretty-printed JSON, CSV, UTF-16, binary)
gets one error and no more. Numbers: ``Problem.line`` is the 1-based line in the file (blank lines
count) and is the "Example N" of messages; ``Problem.message_index`` is 1-based. Warnings are
aggregated by kind with a count and the first line. Fewer than ``min_examples`` valid examples in an
otherwise valid file is ``invalid_n_examples`` ("Training file has {n} example(s), but must have at
least 10 examples"); for a validation file the code is ``invalid_validation_file``.
"""

from openft.datasets.problems import DatasetError, Problem
from openft.datasets.report import TokenStats, ValidationReport, format_report
from openft.datasets.validate import (
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MIN_EXAMPLES,
    TokenCounter,
    ValidationStopped,
    iter_examples,
    validate_file,
)

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MIN_EXAMPLES",
    "DatasetError",
    "Problem",
    "TokenCounter",
    "TokenStats",
    "ValidationReport",
    "ValidationStopped",
    "format_report",
    "iter_examples",
    "validate_file",
]
