"""The report's wording: locations as OpenAI gives them, token statistics, and the CLI's table."""

from __future__ import annotations

import pytest
from dataset_rows import chat

from openft.datasets import Problem, TokenStats, format_report, validate_file


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (
            Problem(3, 2, "messages[1].weight", "weight must be 0 or 1"),
            "Example 3, message 2: weight must be 0 or 1.",
        ),
        (
            Problem(3, None, "preferred_output", "must be a list"),
            "Example 3, preferred_output: must be a list.",
        ),
        (
            Problem(3, None, None, "the example has no user message"),
            "Example 3: the example has no user message.",
        ),
        (Problem(7, None, None, "looks truncated", "truncated"), "Line 7 looks truncated."),
        (Problem(1, None, None, "The file is a JSON array.", "not_jsonl"), "The file is a JSON array."),
    ],
)
def test_problem_describe_locates_like_openai(problem, text):
    assert problem.describe() == text


def test_token_stats_uses_nearest_rank_percentiles():
    stats = TokenStats.from_counts(list(range(1, 101)))

    assert (stats.n, stats.total, stats.min, stats.max) == (100, 5050, 1, 100)
    assert (stats.p50, stats.p90, stats.p99, stats.mean) == (50, 90, 99, 50.5)
    assert TokenStats.from_counts([]) is None
    assert TokenStats.from_counts([7]).p99 == 7


def test_format_report_shows_errors_by_line_and_kind_warnings_and_tokens(write_jsonl):
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]}
    path = write_jsonl([chat(i) for i in range(10)] + [bad, "oops", ""])

    text = format_report(validate_file(path, method="supervised", count_tokens=lambda e: 40, max_tokens=30))

    assert "Format: fine-tune-chat (method: supervised)" in text
    assert "Result: INVALID (invalid_training_file)" in text
    assert "Errors by kind: json 1, schema 1" in text
    rows = text.splitlines()
    [weight_row] = [r for r in rows if r.strip().startswith("11 ")]
    assert weight_row.split()[:4] == ["11", "2", "schema", "messages[1].weight"]
    assert any(r.split()[:3] == ["12", "-", "json"] for r in rows)
    assert any(r.split()[:3] == ["13", "-", "blank_line"] for r in rows)
    assert "Tokens per example (10 examples): min 40  p50 40  p90 40  p99 40  max 40  mean 40.0" in text
    assert "Over max_tokens (30): 10 (truncated in training)   billable tokens per epoch: 300" in text


def test_format_report_of_a_good_file_says_ok_and_too_few_examples_says_why(write_jsonl):
    good = format_report(validate_file(write_jsonl([chat(i) for i in range(10)]), method="supervised"))
    few = format_report(validate_file(write_jsonl([chat(0)]), method="supervised"))

    assert "Result: OK" in good and "Errors" not in good
    assert "Result: INVALID (invalid_n_examples)" in few
    assert "Training file has 1 example(s), but must have at least 10 examples" in few


def test_error_message_of_a_valid_file_is_a_caller_bug(write_jsonl):
    report = validate_file(write_jsonl([chat(i) for i in range(10)]), method="supervised")

    with pytest.raises(ValueError, match="valid"):
        report.error_message("training", "file-abc")
