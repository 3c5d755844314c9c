"""A reinforcement job's grader is stored and read back on SQLite and PostgreSQL (migration 0004_rft),
travels with the worker's claim, and is echoed in OpenAI's method shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from openft.api.schemas.fine_tuning import FineTuningJob
from openft.services.context import Services
from openft.settings import DEFAULT_BASE_MODEL, Settings

GRADER = {
    "type": "multi",
    "graders": {
        "exact": {
            "type": "string_check",
            "name": "exact",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "eq",
        },
        "short": {"type": "python", "name": "short", "source": "def grade(sample, item):\n    return 1.0\n"},
    },
    "calculate_output": "0.8 * exact + 0.2 * short",
    "ignored_field": True,
}
PROMPTS = b'{"messages": [{"role": "user", "content": "2 + 2?"}], "answer": "4"}\n' * 10


@pytest.fixture
def services(tmp_path, database_url) -> Iterator[Services]:
    services = Services.build(Settings(home=tmp_path / "home", database_url=database_url))
    yield services
    services.close()


def test_the_grader_round_trips_through_the_database_and_the_claim(services, openapi):
    org = services.organizations.ensure_default().id
    file = services.files.create_from_bytes(org, "prompts.jsonl", "fine-tune", PROMPTS)
    job = services.fine_tuning.create(
        org,
        model=DEFAULT_BASE_MODEL,
        training_file=file.id,
        method={
            "type": "reinforcement",
            "reinforcement": {"grader": GRADER, "hyperparameters": {"group_size": 8}},
        },
    )
    stored = services.fine_tuning.retrieve(org, job.id)
    expected = {key: value for key, value in GRADER.items() if key != "ignored_field"} | {"name": "multi"}
    assert stored.grader == expected  # known fields only
    assert stored.method_type == "reinforcement" and stored.hyperparameters["group_size"] == 8

    wire = FineTuningJob.from_row(stored).model_dump()
    assert wire["method"]["reinforcement"]["grader"] == expected
    assert wire["method"]["reinforcement"]["hyperparameters"]["reasoning_effort"] == "default"
    openapi.assert_matches("FineTuningJob", wire)

    claim = services.runtime.claim("worker-1", 60.0)
    assert claim.job.id == job.id and claim.job.grader == expected
