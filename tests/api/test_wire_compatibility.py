"""Wire compatibility with what OpenAI's own clients send, on SQLite and PostgreSQL: JSON bodies
without a JSON Content-Type, an alias that keeps the caller's model name, page limits, empty bodies."""

from __future__ import annotations

import hashlib
import json

import openai
import pytest
from sqlalchemy import select

from openft.settings import Settings
from openft.store.tables import ModelRow
from openft.worker.loop import Worker

BASE = "tiny-llama"
ALIAS = "gpt-4o-mini-2024-07-18"
LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
DATA = LINE * 10
# What curl sends with -d and no -H "Content-Type: ...", as in OpenAI's own examples; and nothing.
NOT_JSON_TYPES = [
    {"content-type": "application/x-www-form-urlencoded"},
    {"content-type": "text/plain"},
    {},
]


@pytest.fixture
def settings(tmp_path, database_url, tiny_model_dir) -> Settings:
    return Settings(
        home=tmp_path / "openft-home",
        database_url=database_url,
        base_models={BASE: str(tiny_model_dir)},
        model_aliases={ALIAS: BASE},
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        poll_seconds=0.2,
    )


def _post(http, path: str, body: dict, headers: dict):
    """A raw POST whose only Content-Type is the one given (httpx adds none for ``content=``)."""
    return http.post(path, content=json.dumps(body).encode(), headers=headers)


@pytest.mark.parametrize("headers", NOT_JSON_TYPES, ids=["form-urlencoded", "text-plain", "none"])
def test_uploads_flow_accepts_json_without_json_content_type(client, http, headers):
    created = _post(
        http,
        "/v1/uploads",
        {"purpose": "fine-tune", "filename": "train.jsonl", "bytes": len(DATA), "mime_type": "text/jsonl"},
        headers,
    )
    assert created.status_code == 200, created.text
    upload_id = created.json()["id"]
    part = client.uploads.parts.create(upload_id, data=DATA)
    done = _post(
        http,
        f"/v1/uploads/{upload_id}/complete",
        {"part_ids": [part.id], "md5": hashlib.md5(DATA).hexdigest()},
        headers,
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"
    assert client.files.content(done.json()["file"]["id"]).content == DATA


@pytest.mark.parametrize("headers", NOT_JSON_TYPES, ids=["form-urlencoded", "text-plain", "none"])
def test_job_create_accepts_json_without_json_content_type(client, http, headers):
    training = client.files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    created = _post(http, "/v1/fine_tuning/jobs", {"model": BASE, "training_file": training.id}, headers)
    assert created.status_code == 200, created.text
    assert client.fine_tuning.jobs.retrieve(created.json()["id"]).training_file == training.id


def test_malformed_json_without_content_type_is_still_the_malformed_json_400(http):
    response = http.post("/v1/uploads", content=b"purpose=fine-tune&bytes=3")
    assert response.status_code == 400
    assert "could not parse the JSON body" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "missing"),
    [("/v1/fine_tuning/jobs", "model"), ("/v1/uploads", "filename")],
)
@pytest.mark.parametrize("body", [b"", b"  \n", b"{}"], ids=["empty", "blank", "empty-object"])
def test_create_with_empty_body_names_the_missing_field(http, path, missing, body):
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == missing
    assert error["message"] == f"Missing required parameter: '{missing}'."


def test_complete_with_empty_body_names_part_ids(client, http):
    upload = client.uploads.create(
        bytes=len(DATA), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    response = http.post(f"/v1/uploads/{upload.id}/complete", content=b"")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "part_ids"


@pytest.mark.parametrize("limit", [0, -5, 10001])
def test_file_list_limit_out_of_range_answers_400(client, limit):
    with pytest.raises(openai.BadRequestError) as raised:
        client.files.list(limit=limit)
    assert raised.value.param == "limit"
    assert f"'limit': {limit}" in raised.value.message


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_job_list_limits_out_of_range_answer_400(client, limit):
    training = client.files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=training.id)
    calls = [
        lambda: client.fine_tuning.jobs.list(limit=limit),
        lambda: client.fine_tuning.jobs.list_events(job.id, limit=limit),
        lambda: client.fine_tuning.jobs.checkpoints.list(job.id, limit=limit),
    ]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as raised:
            call()
        assert raised.value.param == "limit"
    assert len(client.fine_tuning.jobs.list(limit=1).data) == 1


def test_alias_keeps_the_callers_name_and_trains_the_open_model(client, services):
    training = client.files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    one_step = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 10}}}
    job = client.fine_tuning.jobs.create(
        model=ALIAS, training_file=training.id, suffix="wire", method=one_step
    )
    assert job.model == ALIAS
    alias_events = [e for e in client.fine_tuning.jobs.list_events(job.id) if BASE in e.message]
    assert [e.data for e in alias_events] == [{"model": ALIAS, "base_model": BASE}]
    assert ALIAS in alias_events[0].message

    assert Worker(services).run(burst=True) == 2
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.model == ALIAS
    assert job.fine_tuned_model.startswith(f"ft:{ALIAS}:personal:wire:")
    (checkpoint,) = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoint.fine_tuned_model_checkpoint == job.fine_tuned_model
    with services.db.read() as session:
        row = session.scalar(select(ModelRow).where(ModelRow.id == job.fine_tuned_model))
    assert row is not None and row.base_model == BASE  # serving loads the open model's weights

    question = [{"role": "user", "content": "hi"}]
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=question, max_tokens=2)
    assert reply.model == job.fine_tuned_model and reply.usage.prompt_tokens > 0

    # Continuing from the ft: model keeps the caller's base name too.
    again = client.fine_tuning.jobs.create(
        model=job.fine_tuned_model, training_file=training.id, method=one_step
    )
    assert again.model == job.fine_tuned_model
    assert Worker(services).run(burst=True) == 2
    again = client.fine_tuning.jobs.retrieve(again.id)
    assert again.status == "succeeded", again.error
    assert again.fine_tuned_model.startswith(f"ft:{ALIAS}:personal::")
    assert client.models.retrieve(again.fine_tuned_model).id == again.fine_tuned_model
