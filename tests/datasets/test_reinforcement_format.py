"""OpenAI's RFT format: prompts that end in a user or developer turn, every other key kept for graders."""

from __future__ import annotations

import io
import json

from openft.datasets import iter_examples, validate_file


def _file(rows: list) -> io.BytesIO:
    return io.BytesIO(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))


def prompt(i: int, **extra) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i), **extra}


def test_a_valid_file_keeps_every_field_for_the_grader():
    rows = [prompt(i, reference={"steps": [i]}) for i in range(10)]
    rows[3]["messages"].insert(0, {"role": "developer", "content": "Reply with #### n"})
    report = validate_file(_file(rows), method="reinforcement")
    assert report.ok and report.format == "reinforcement" and report.n_examples == 10
    examples = [e for _, e in iter_examples(_file(rows), method="reinforcement")]
    assert examples[0]["answer"] == "0" and examples[5]["reference"] == {"steps": [5]}
    assert examples[0]["tools"] == [] and examples[0]["messages"][-1]["role"] == "user"


def test_line_level_errors_name_the_example_and_message():
    rows = [prompt(i) for i in range(10)]
    rows[1] = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "answer": "a",
    }
    rows[4] = {"messages": [{"role": "user"}], "answer": "x"}
    rows[6] = b"{not json"
    rows[7] = {"messages": [], "answer": "x"}
    report = validate_file(_file(rows), method="reinforcement")
    assert not report.ok and report.error_code("training_file") == "invalid_training_file"
    described = [p.describe() for p in report.errors]
    assert described[0].startswith("Example 2, message 2: the last message is an assistant message")
    assert described[1].startswith("Example 5, message 1: the user message has no 'content'")
    assert described[2].startswith("Line 7 ")
    assert described[3].startswith("Example 8, messages: 'messages' must be a non-empty array")


def test_a_preference_file_is_the_wrong_format_for_reinforcement():
    row = {
        "input": {"messages": [{"role": "user", "content": "q"}]},
        "preferred_output": [{"role": "assistant", "content": "a"}],
        "non_preferred_output": [{"role": "assistant", "content": "b"}],
    }
    report = validate_file(_file([row] * 10), method="reinforcement")
    assert not report.ok and "fine-tune-preference" in report.errors[0].message
