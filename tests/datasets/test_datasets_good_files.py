"""Valid files of each format pass, are normalised, and are counted and billed as OpenAI does."""

from __future__ import annotations

import json

import pytest
from dataset_rows import chat, completion, preference

from openft.datasets import iter_examples, validate_file


def test_validate_good_chat_file_passes_without_warnings(write_jsonl):
    path = write_jsonl([chat(i) for i in range(12)])

    report = validate_file(path, method="supervised")

    assert report.ok, report.errors
    assert (report.format, report.n_examples, report.n_errors, report.warnings) == ("chat", 12, 0, [])
    assert report.error_code("training_file") is None


def test_validate_chat_with_tools_parts_and_weights_normalises_them(write_jsonl):
    rich = {
        "messages": [
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Use "}, {"type": "text", "text": "tools."}],
            },
            {"role": "user", "content": "Weather in Paris?", "name": "ann"},
            {"role": "assistant", "content": "thinking", "weight": 0},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "refusal": "I won't say.", "content": None},
            {"role": "assistant", "content": "Sunny.", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        "parallel_tool_calls": False,
    }
    legacy = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "function", "name": "f", "content": "ok"},
            {"role": "assistant", "content": "done"},
        ],
        "functions": [{"name": "f", "description": "does f"}],
    }
    path = write_jsonl([rich, legacy] + [chat(i) for i in range(8)])

    report = validate_file(path, method="supervised")
    examples = dict(iter_examples(path, method="supervised"))

    assert report.ok, [p.describe() for p in report.errors]
    first = examples[1]
    assert first["messages"][0]["content"] == "Use tools."
    assert [m.get("weight") for m in first["messages"]] == [None, None, 0, 1, None, 1, 1]
    assert first["messages"][3]["content"] is None
    assert first["messages"][5]["content"] == "I won't say."
    assert first["parallel_tool_calls"] is False
    assert examples[2]["tools"] == [{"type": "function", "function": {"name": "f", "description": "does f"}}]
    assert examples[3]["parallel_tool_calls"] is True and examples[3]["tools"] == []


@pytest.mark.parametrize("spelling", ["output", "completion"])
def test_validate_good_dpo_file_accepts_both_spellings_and_normalises(write_jsonl, spelling):
    path = write_jsonl([preference(i, spelling) for i in range(10)])

    report = validate_file(path, method="dpo")
    line, example = next(iter_examples(path, method="dpo"))

    assert report.ok, [p.describe() for p in report.errors]
    assert (report.format, report.n_examples) == ("preference", 10)
    assert line == 1
    assert set(example) == {"input", "preferred_output", "non_preferred_output"}
    assert example["preferred_output"] == [{"role": "assistant", "content": "Hi #0!"}]
    assert example["input"] == {
        "messages": [{"role": "user", "content": "Say hi number 0"}],
        "tools": [],
        "parallel_tool_calls": True,
    }


def test_validate_good_completion_file_passes(write_jsonl):
    path = write_jsonl([completion(i) for i in range(10)])

    report = validate_file(path, method="supervised")

    assert report.ok
    assert (report.format, report.n_examples) == ("completion", 10)
    assert list(iter_examples(path, method="supervised"))[0] == (1, {"prompt": "0 + 1 =", "completion": " 1"})


def test_validate_crlf_line_endings_are_accepted(write_jsonl):
    path = write_jsonl([chat(i) for i in range(10)], newline=b"\r\n")

    report = validate_file(path, method="supervised")

    assert report.ok and report.n_examples == 10 and report.warnings == []


def test_validate_bom_at_start_is_accepted_with_a_warning(write_jsonl):
    path = write_jsonl([chat(i) for i in range(10)], prefix=b"\xef\xbb\xbf")

    report = validate_file(path, method="supervised")

    assert report.ok and report.n_examples == 10
    assert [(w.kind, w.line) for w in report.warnings] == [("bom", 1)]
    assert "byte-order mark" in report.warnings[0].describe()


def test_validate_trailing_and_inner_blank_lines_are_skipped_with_one_warning(write_jsonl):
    rows = [chat(i) for i in range(5)] + [""] + [chat(i) for i in range(5)] + ["", "   ", ""]
    path = write_jsonl(rows)

    report = validate_file(path, method="supervised")

    assert report.ok and report.n_examples == 10
    assert report.n_warnings == 4
    [warning] = report.warnings
    assert warning.kind == "blank_line" and warning.line == 6
    assert "4 lines, first at line 6" in warning.describe()


def test_validate_counts_tokens_once_per_valid_example_and_bills_like_openai(write_jsonl):
    rows = [chat(i) for i in range(10)] + ["not json"]
    path = write_jsonl(rows)
    seen = []

    def count(example: dict) -> int:
        seen.append(example)
        return 10 * (1 + int(example["messages"][1]["content"].split()[2]))

    report = validate_file(path, method="supervised", count_tokens=count, max_tokens=75, min_examples=1)

    assert len(seen) == 10 and all("tools" in e for e in seen)
    assert list(report.token_counts) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert report.n_over_limit == 3
    assert report.billable_tokens == sum(min(75, n) for n in report.token_counts)
    stats = report.token_stats
    assert (stats.min, stats.max, stats.p50, stats.p90, stats.p99, stats.mean) == (10, 100, 50, 90, 100, 55.0)
    [over] = [w for w in report.warnings if w.kind == "over_max_tokens"]
    assert over.line == 8 and "3 examples, first at line 8" in over.describe()


def test_validate_without_token_counter_leaves_token_fields_empty(write_jsonl):
    report = validate_file(write_jsonl([chat(i) for i in range(10)]), method="supervised")

    assert (len(report.token_counts), report.billable_tokens, report.token_stats) == (0, 0, None)


def test_validate_accepts_an_open_binary_stream_and_leaves_it_open(write_jsonl):
    path = write_jsonl([completion(i) for i in range(10)])
    with open(path, "rb") as stream:
        report = validate_file(stream, method="supervised")
        assert not stream.closed
    assert report.ok


def test_validate_text_stream_is_refused_as_a_caller_bug(write_jsonl):
    path = write_jsonl([completion(i) for i in range(10)])
    with open(path, encoding="utf-8") as stream, pytest.raises(TypeError, match="binary"):
        validate_file(stream, method="supervised")


def test_validate_missing_system_and_user_messages_are_warnings(write_jsonl):
    bare = {"messages": [{"role": "assistant", "content": "Hello"}]}
    path = write_jsonl([bare] * 10)

    report = validate_file(path, method="supervised")

    assert report.ok
    assert sorted(w.message for w in report.warnings) == [
        "the example has no system message (10 examples, first at line 1)",
        "the example has no user message (10 examples, first at line 1)",
    ]


def test_validate_unknown_top_level_key_is_warned_once(write_jsonl):
    path = write_jsonl([chat(i, id=i) for i in range(10)])

    report = validate_file(path, method="supervised")

    assert report.ok
    [warning] = report.warnings
    assert (warning.kind, warning.field, report.n_warnings) == ("unknown_key", "id", 10)
    assert json.dumps("id") not in warning.message and "'id'" in warning.message


def test_validate_dpo_identical_outputs_is_a_warning_not_an_error(write_jsonl):
    same = preference(0)
    same["non_preferred_output"] = same["preferred_output"]
    path = write_jsonl([same] + [preference(i) for i in range(1, 10)])

    report = validate_file(path, method="dpo")

    assert report.ok
    [warning] = report.warnings
    assert (warning.line, warning.field) == (1, "preferred_output") and "identical" in warning.message
