"""A corpus of bad files, one per failure: each gives the right code and names the right line and message."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from dataset_rows import Row, chat, completion, encode, preference

from openft.datasets import validate_file

GOOD = [chat(i) for i in range(10)]
GOOD_DPO = [preference(i) for i in range(10)]


def convo(*messages: dict, **extra) -> dict:
    return {"messages": list(messages), **extra}


USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}


def tool_call(arguments: object = "{}", **extra) -> dict:
    return {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": arguments},
        **extra,
    }


@dataclass(frozen=True)
class Case:
    """A bad file and what validation must say about it: its first error's line, message, kind, text."""

    data: bytes
    line: int
    message_index: int | None
    kind: str
    text: str
    method: str = "supervised"
    code: str = "invalid_training_file"
    field: str | None = None


def bad_line(row: Row, at: int = 4, **expect) -> Case:
    """GOOD with ``row`` inserted so that it is line ``at``."""
    rows = GOOD[: at - 1] + [row] + GOOD[at - 1 :]
    return Case(encode(rows), line=at, **expect)


CASES: dict[str, Case] = {
    "weight_2": bad_line(
        convo(USER, {**ASSISTANT, "weight": 2}),
        message_index=2,
        kind="schema",
        field="messages[1].weight",
        text="weight must be 0 or 1, got 2",
    ),
    "weight_true": bad_line(
        convo(USER, {**ASSISTANT, "weight": True}), message_index=2, kind="schema", text="got true"
    ),
    "weight_on_user": bad_line(
        convo({**USER, "weight": 1}, ASSISTANT),
        message_index=1,
        kind="schema",
        field="messages[0].weight",
        text="'weight' is only allowed on assistant messages",
    ),
    "only_assistant_weight_0": bad_line(
        convo(USER, {**ASSISTANT, "weight": 0}),
        message_index=None,
        kind="schema",
        field="messages",
        text="every assistant message has weight 0",
    ),
    "no_assistant": bad_line(convo(USER), message_index=None, kind="schema", text="no assistant message"),
    "tool_without_tool_call_id": bad_line(
        convo(
            USER,
            {"role": "assistant", "tool_calls": [tool_call()]},
            {"role": "tool", "content": "42"},
            ASSISTANT,
        ),
        message_index=3,
        kind="schema",
        field="messages[2].tool_call_id",
        text="a tool message needs 'tool_call_id'",
    ),
    "tool_call_id_unmatched": bad_line(
        convo(
            USER,
            {"role": "assistant", "tool_calls": [tool_call()]},
            {"role": "tool", "tool_call_id": "call_9", "content": "42"},
            ASSISTANT,
        ),
        message_index=3,
        kind="schema",
        text="'call_9' does not match",
    ),
    "arguments_not_json": bad_line(
        convo(USER, {"role": "assistant", "tool_calls": [tool_call("{city: Paris")]}),
        message_index=2,
        kind="schema",
        field="messages[1].tool_calls[0].function.arguments",
        text="'arguments' is not valid JSON",
    ),
    "arguments_object_not_string": bad_line(
        convo(USER, {"role": "assistant", "tool_calls": [tool_call({"city": "Paris"})]}),
        message_index=2,
        kind="schema",
        text="must be a string holding JSON",
    ),
    "unknown_message_key": bad_line(
        convo(USER, {**ASSISTANT, "thoughts": "hmm"}),
        message_index=2,
        kind="schema",
        field="messages[1].thoughts",
        text="unknown key 'thoughts' in an assistant message",
    ),
    "missing_role": bad_line(
        convo(USER, {"content": "hello"}), message_index=2, kind="schema", text="the message has no 'role'"
    ),
    "unknown_role": bad_line(
        convo({"role": "human", "content": "hi"}, ASSISTANT),
        message_index=1,
        kind="schema",
        text="unknown role 'human'",
    ),
    "image_part": bad_line(
        convo(
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            ASSISTANT,
        ),
        message_index=1,
        kind="schema",
        text="images are not supported by this base model",
    ),
    "content_number": bad_line(
        convo({"role": "user", "content": 5}, ASSISTANT),
        message_index=1,
        kind="schema",
        text="got the number 5",
    ),
    "empty_messages": bad_line(
        convo(), message_index=None, kind="schema", text="non-empty array of messages"
    ),
    "bad_tools": bad_line(
        convo(USER, ASSISTANT, tools=[{"type": "function", "function": {"description": "no name"}}]),
        message_index=None,
        kind="schema",
        field="tools[0].function.name",
        text="needs a 'name'",
    ),
    "parallel_tool_calls_string": bad_line(
        convo(USER, ASSISTANT, parallel_tool_calls="no"),
        message_index=None,
        kind="schema",
        text="'parallel_tool_calls' must be true or false",
    ),
    "unknown_format": bad_line(
        {"question": "q", "answer": "a"}, message_index=None, kind="format", text="'question'"
    ),
    "mixed_formats": bad_line(
        completion(), message_index=None, kind="format", text="fine-tune-completion format"
    ),
    "not_json": bad_line('{"messages": [}', message_index=None, kind="json", text="Line 4 is not valid JSON"),
    "two_objects_on_a_line": bad_line(
        '{"prompt": "a", "completion": "b"}{"prompt": "a", "completion": "b"}',
        message_index=None,
        kind="json",
        text="more than one JSON value",
    ),
    "line_is_array": bad_line("[1, 2]", message_index=None, kind="not_object", text="Line 4 is an array"),
    "line_is_null": bad_line(
        "null", message_index=None, kind="not_object", text="is null, not a JSON object"
    ),
    "bom_mid_file": bad_line(
        b"\xef\xbb\xbf" + encode([chat()], final_newline=False),
        message_index=None,
        kind="bom",
        text="Line 4 starts",
    ),
    "non_utf8_mid_file": bad_line(
        b'{"prompt": "caf\xe9", "completion": "x"}',
        message_index=None,
        kind="encoding",
        text="byte 0xe9 at byte offset",
    ),
    "truncated_last_line": Case(
        encode(GOOD + ['{"messages": [{"role": "user", "content": "cut'], final_newline=False),
        line=11,
        message_index=None,
        kind="truncated",
        text="Line 11 looks truncated",
    ),
    "json_array_file": Case(
        b'[{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]\n',
        line=1,
        message_index=None,
        kind="not_jsonl",
        text="is a JSON array, not JSONL",
    ),
    "pretty_printed_json": Case(
        b'{\n  "prompt": "a",\n  "completion": "b"\n}\n' * 12,
        line=1,
        message_index=None,
        kind="not_jsonl",
        text="pretty-printed JSON",
    ),
    "csv_file": Case(
        b"prompt,completion\n" + b"a,b\n" * 10_000,
        line=1,
        message_index=None,
        kind="not_jsonl",
        text="line 1 is not JSON (is it CSV",
    ),
    "utf16_file": Case(
        "\n".join(['{"prompt": "a", "completion": "b"}'] * 10).encode("utf-16"),
        line=1,
        message_index=None,
        kind="not_jsonl",
        text="UTF-16",
    ),
    "gzip_file": Case(
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xae\x05\x00",
        line=1,
        message_index=None,
        kind="not_jsonl",
        text="binary",
    ),
    "empty_file": Case(b"", line=0, message_index=None, kind="empty", text="The file is empty"),
    "only_blank_lines": Case(
        b"\n\n  \r\n", line=0, message_index=None, kind="empty", text="only blank lines"
    ),
    "dpo_two_preferred": Case(
        encode(
            GOOD_DPO[:2]
            + [
                {
                    **preference(),
                    "preferred_output": [ASSISTANT, {"role": "assistant", "content": "again"}],
                }
            ]
            + GOOD_DPO[2:]
        ),
        method="dpo",
        line=3,
        message_index=None,
        kind="schema",
        field="preferred_output",
        text="exactly one assistant message, got 2 messages",
    ),
    "dpo_output_from_user": Case(
        encode([{**preference(), "non_preferred_output": [USER]}] + GOOD_DPO),
        method="dpo",
        line=1,
        message_index=None,
        kind="schema",
        field="non_preferred_output[0].role",
        text="must have role 'assistant'",
    ),
    "dpo_mixed_spellings": Case(
        encode(
            [
                {
                    "input": {"messages": [USER]},
                    "preferred_output": [ASSISTANT],
                    "non_preferred_completion": [ASSISTANT],
                }
            ]
            + GOOD_DPO
        ),
        method="dpo",
        line=1,
        message_index=None,
        kind="schema",
        text="use one spelling",
    ),
    "dpo_weight_in_input": Case(
        encode(
            [{**preference(), "input": {"messages": [USER, {**ASSISTANT, "weight": 1}, USER]}}] + GOOD_DPO
        ),
        method="dpo",
        line=1,
        message_index=2,
        kind="schema",
        text="'weight' is only used in supervised chat examples",
    ),
    "chat_file_for_dpo": Case(
        encode(GOOD),
        method="dpo",
        line=1,
        message_index=None,
        kind="format_mismatch",
        text="Input file is in the fine-tune-chat format, but the specified fine-tuning job is not using "
        "'supervised' as the training method (provided method=dpo).",
    ),
    "completion_file_for_dpo": Case(
        encode([completion(i) for i in range(10)]),
        method="dpo",
        line=1,
        message_index=None,
        kind="format_mismatch",
        text="fine-tune-completion format",
    ),
    "dpo_file_for_supervised": Case(
        encode(GOOD_DPO),
        line=1,
        message_index=None,
        kind="format_mismatch",
        text="is not using 'dpo' as the training method (provided method=supervised)",
    ),
    "completion_not_string": Case(
        encode([completion(0), {"prompt": "a", "completion": ["b"]}] + [completion(i) for i in range(10)]),
        line=2,
        message_index=None,
        kind="schema",
        field="completion",
        text="Example 2, completion: 'completion' must be a string, got an array",
    ),
    "completion_empty": Case(
        encode([completion(i) for i in range(10)] + [{"prompt": "a", "completion": ""}]),
        line=11,
        message_index=None,
        kind="schema",
        text="'completion' is empty",
    ),
    "too_few_examples": Case(
        encode(GOOD[:3]), line=0, message_index=None, kind="", code="invalid_n_examples", text=""
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_validate_bad_file_reports_code_line_and_message(tmp_path, name):
    case = CASES[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(case.data)

    report = validate_file(path, method=case.method)

    assert not report.ok
    assert report.error_code("training_file") == case.code
    if case.code == "invalid_n_examples":
        assert report.n_errors == 0
        return
    first = report.errors[0]
    assert (first.line, first.message_index, first.kind) == (case.line, case.message_index, case.kind), first
    if case.field is not None:
        assert first.field == case.field
    assert case.text in first.describe()
    message = report.error_message("training", "file-abc")
    assert message.startswith("The job failed due to an invalid training file. Invalid file format. ")
    if case.message_index is not None:
        assert f"Example {case.line}, message {case.message_index}: " in message
    assert report.error_code("validation_file") == "invalid_validation_file"
    assert report.error_message("validation", "file-abc").startswith(
        "The job failed due to an invalid validation file."
    )


def test_validate_mismatch_message_names_the_file_as_openai_does(write_jsonl):
    report = validate_file(write_jsonl(GOOD), method="dpo")

    assert report.n_errors == 1 and report.n_examples == 0
    assert report.error_message("training", "file-XXXX") == (
        "The job failed due to an invalid training file. Invalid file format. Input file file-XXXX is in the "
        "fine-tune-chat format, but the specified fine-tuning job is not using 'supervised' as the training "
        "method (provided method=dpo). Either create the job with method type 'supervised', or upload a file "
        "in the fine-tune-preference format."
    )


def test_validate_not_jsonl_file_says_so_once(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(CASES["csv_file"].data)

    report = validate_file(path, method="supervised")

    assert report.n_errors == 1 and report.n_lines == 1


@pytest.mark.parametrize(
    ("n", "which", "code"),
    [(0, "training", "invalid_n_examples"), (9, "validation", "invalid_validation_file")],
)
def test_validate_too_few_examples_uses_openai_wording(write_jsonl, n, which, code):
    path = write_jsonl(GOOD[:n] + ["not json"] if n == 0 else GOOD[:n])
    report = validate_file(path, method="supervised")
    if n == 0:
        # A file with no valid example because of errors reports the errors, not the count.
        assert report.error_code("training_file") == "invalid_training_file"
        return

    assert report.error_code(f"{which}_file") == code
    assert report.error_message(which, "file-abc") == (
        f"{which.capitalize()} file has {n} example(s), but must have at least 10 examples"
    )


def test_validate_min_examples_is_a_parameter(write_jsonl):
    path = write_jsonl(GOOD[:3])

    assert validate_file(path, method="supervised", min_examples=3).ok
    assert not validate_file(path, method="supervised", min_examples=4).ok


def test_validate_non_utf8_byte_offset_is_from_the_start_of_the_file(write_jsonl):
    lines = [encode([chat(0)], final_newline=False), b'{"messages": "\xff"}']
    path = write_jsonl([*lines, *GOOD])

    report = validate_file(path, method="supervised")

    column = lines[1].index(b"\xff")
    offset = len(lines[0]) + 1 + column
    assert report.errors[0].line == 2
    assert f"byte offset {offset} of the file (column {column + 1} of the line)" in report.errors[0].message
    assert report.n_examples == 11


def test_validate_combination_of_problems_lists_three_then_and_n_more(write_jsonl):
    rows = list(GOOD)
    rows[1] = convo(USER, {**ASSISTANT, "weight": 2})
    rows[3] = "not json"
    rows[5] = convo({**USER, "weight": 1}, ASSISTANT)
    rows[7] = convo(USER, {"role": "assistant", "tool_calls": [tool_call("nope")]})
    rows[8] = "[]"
    path = write_jsonl(rows + [""])

    report = validate_file(path, method="supervised")
    message = report.error_message("training", "file-abc")

    assert [(e.line, e.kind) for e in report.errors] == [
        (2, "schema"),
        (4, "json"),
        (6, "schema"),
        (8, "schema"),
        (9, "not_object"),
    ]
    assert report.n_examples == 5
    assert "Example 2, message 2: weight must be 0 or 1" in message
    assert "Line 4 is not valid JSON" in message
    assert "Example 6, message 1: 'weight' is only allowed" in message
    assert "Example 8" not in message
    assert message.endswith("And 2 more error(s); run `openft validate` on the file to list them all.")
    assert [w.kind for w in report.warnings] == ["blank_line"]


def test_validate_counts_every_error_but_keeps_only_the_first_hundred(write_jsonl):
    path = write_jsonl([chat(0)] + ["{bad"] * 500)

    report = validate_file(path, method="supervised")

    assert report.n_errors == 500 and len(report.errors) == 100
    assert report.errors_by_kind == {"json": 500}
    assert "And 497 more error(s)" in report.error_message("training", "file-abc")


def test_validate_unknown_method_is_refused_as_a_caller_bug(write_jsonl):
    with pytest.raises(ValueError, match="method must be one of"):
        validate_file(write_jsonl(GOOD), method="rlhf")
