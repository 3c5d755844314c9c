"""Bad training files through the front door: upload, create, let a worker validate; each job ends
``failed`` with OpenAI's error code and a message that names the line, and nothing is trained."""

from __future__ import annotations

import json

import pytest

from openft.settings import Settings
from openft.worker.loop import Worker

BASE = "tiny-llama"


def _chat(i: int, **assistant) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}", **assistant},
        ]
    }


def _jsonl(rows: list) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


GOOD = [_chat(i) for i in range(12)]
PREFERENCE = {
    "input": {"messages": [{"role": "user", "content": "hi"}]},
    "preferred_output": [{"role": "assistant", "content": "hello!"}],
    "non_preferred_output": [{"role": "assistant", "content": "go away"}],
}


def _with(line: int, row) -> bytes:
    """GOOD with ``row`` (an object, or raw bytes) as line ``line``."""
    lines = [json.dumps(r).encode() for r in GOOD]
    lines.insert(line - 1, row if isinstance(row, bytes) else json.dumps(row).encode())
    return b"\n".join(lines) + b"\n"


# name: (file bytes, method, expected code, text the message must contain)
CASES = {
    "weight_2": (
        _with(3, _chat(99, weight=2)),
        "supervised",
        "invalid_training_file",
        "Example 3, message 2",
    ),
    "weight_on_user": (
        _with(
            5,
            {
                "messages": [
                    {"role": "user", "content": "x", "weight": 1},
                    {"role": "assistant", "content": "y"},
                ]
            },
        ),
        "supervised",
        "invalid_training_file",
        "Example 5, message 1",
    ),
    "unknown_role": (
        _with(2, {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        "supervised",
        "invalid_training_file",
        "Example 2, message 1",
    ),
    "nothing_to_train": (_with(4, _chat(99, weight=0)), "supervised", "invalid_training_file", "Example 4"),
    "not_json": (_with(6, b"{this is not json"), "supervised", "invalid_training_file", "6"),
    "non_utf8": (_with(7, b'{"messages": "\xff\xfe"}'), "supervised", "invalid_training_file", "7"),
    "truncated_last_line": (
        _jsonl(GOOD) + b'{"messages": [{"role": "user", "content": "cut',
        "supervised",
        "invalid_training_file",
        "13",
    ),
    "tool_arguments_not_json": (
        _with(
            8,
            {
                "messages": [
                    {"role": "user", "content": "weather?"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{"}}
                        ],
                    },
                ]
            },
        ),
        "supervised",
        "invalid_training_file",
        "Example 8, message 2",
    ),
    "too_few_examples": (
        _jsonl(GOOD[:7]),
        "supervised",
        "invalid_n_examples",
        "Training file has 7 example(s), but must have at least 10 examples",
    ),
    "chat_file_for_dpo": (_jsonl(GOOD), "dpo", "invalid_training_file", "provided method=dpo"),
    "dpo_two_preferred": (
        _jsonl(
            [PREFERENCE] * 3
            + [{**PREFERENCE, "preferred_output": PREFERENCE["preferred_output"] * 2}]
            + [PREFERENCE] * 8
        ),
        "dpo",
        "invalid_training_file",
        "Example 4",
    ),
    "csv_not_jsonl": (b"prompt,completion\n" * 12, "supervised", "invalid_training_file", "JSONL"),
    "combination": (
        _with(2, _chat(98, weight=2))[:-1] + b"\n" + json.dumps(_chat(97, weight=0)).encode() + b"\n",
        "supervised",
        "invalid_training_file",
        "Example 2, message 2",
    ),
}


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home, database_url=f"sqlite:///{home / 'openft.db'}", base_models={BASE: str(tiny_model_dir)}
    )


def test_every_bad_file_fails_its_job_with_the_right_code_and_line(client, services):
    jobs = {}
    for name, (data, method, _, _) in CASES.items():
        # Uploads are checked for JSONL only by their first line; a CSV is refused at the door.
        try:
            training = client.files.create(file=(f"{name}.jsonl", data), purpose="fine-tune")
        except Exception as exc:  # noqa: BLE001 - only the CSV case may be refused here
            assert name == "csv_not_jsonl", (name, exc)
            assert "jsonl" in str(exc).lower()
            continue
        jobs[name] = client.fine_tuning.jobs.create(
            model=BASE, training_file=training.id, method={"type": method}
        )

    Worker(services).run(burst=True)

    for name, created in jobs.items():
        _, _, code, text = CASES[name]
        job = client.fine_tuning.jobs.retrieve(created.id)
        assert job.status == "failed", name
        assert job.error.code == code, (name, job.error)
        assert job.error.param == "training_file", name
        assert text in job.error.message, (name, job.error.message)
        assert job.trained_tokens is None and job.fine_tuned_model is None and job.result_files == []
        events = list(client.fine_tuning.jobs.list_events(job.id))
        assert events[0].level == "error" and events[0].message == job.error.message
        assert not any(e.type == "metrics" for e in events)
