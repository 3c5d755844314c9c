"""Listing, retrieving, cancelling, pausing and resuming jobs, and their events and checkpoints, via the SDK."""

from __future__ import annotations

import openai
import pytest

from openft.settings import DEFAULT_BASE_MODEL
from openft.store.jobs import get_job

TRAIN = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 10
LEASE = 60.0


@pytest.fixture
def org(services) -> str:
    return services.organizations.ensure_default().id


@pytest.fixture
def training_file(services, org) -> str:
    return services.files.create_from_bytes(org, "train.jsonl", "fine-tune", TRAIN).id


def new_job(services, org, training_file, **fields) -> str:
    return services.fine_tuning.create(
        org, model=DEFAULT_BASE_MODEL, training_file=training_file, **fields
    ).id


def job_in(status: str, services, org, training_file) -> str:
    """A job driven to ``status`` the way the worker and the API would drive it."""
    runtime = services.runtime
    job_id = new_job(services, org, training_file)
    if status == "validating_files":
        return job_id
    claim = runtime.claim("w", LEASE)
    if status == "failed":
        runtime.fail(
            job_id, claim.generation, code="invalid_n_examples", message="too few", param="training_file"
        )
        return job_id
    hp = {**claim.job.hyperparameters, "n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0}
    runtime.mark_validated(job_id, claim.generation, hyperparameters=hp, stats={"total_steps": 10})
    if status in ("queued", "cancelled"):
        if status == "cancelled":
            services.fine_tuning.cancel(org, job_id)
        return job_id
    claim = runtime.claim("w", LEASE)
    if status == "paused":
        services.fine_tuning.pause(org, job_id)
        runtime.finish_stopped(job_id, claim.generation)
    elif status == "succeeded":
        runtime.succeed(
            job_id,
            claim.generation,
            artifact_path=f"jobs/{job_id}/final",
            trained_tokens=200,
            result_csv=b"step,train_loss\n1,0.5\n",
            final_step=10,
            final_metrics={"train_loss": 0.5},
        )
    return job_id


def generation_of(services, job_id: str) -> int:
    with services.db.transaction() as session:
        return get_job(session, job_id).lease_generation


def test_list_paginates_55_jobs_newest_first(client, services, org, training_file):
    created = [new_job(services, org, training_file) for _ in range(55)]

    first = client.fine_tuning.jobs.list()
    assert len(first.data) == 20 and first.has_more
    assert [j.id for j in first.data] == created[::-1][:20]
    assert [j.id for j in client.fine_tuning.jobs.list()] == created[::-1]  # the SDK follows `after`
    page = client.fine_tuning.jobs.list(limit=50, after=created[5])
    assert [j.id for j in page.data] == created[:5][::-1] and not page.has_more
    end = client.fine_tuning.jobs.list(after=created[0])
    assert (end.data, end.has_more) == ([], False)


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_list_limit_out_of_range_answers_400(client, services, org, training_file, limit):
    job_id = new_job(services, org, training_file)
    for list_call in (
        lambda: client.fine_tuning.jobs.list(limit=limit),
        lambda: client.fine_tuning.jobs.list_events(job_id, limit=limit),
        lambda: client.fine_tuning.jobs.checkpoints.list(job_id, limit=limit),
    ):
        with pytest.raises(openai.BadRequestError) as raised:
            list_call()
        assert raised.value.param == "limit" and str(limit) in raised.value.message


def test_list_unknown_after_answers_400(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.list(after="ftjob-nope")
    assert raised.value.param == "after"


def test_list_filters_by_metadata(client, services, org, training_file):
    a = new_job(services, org, training_file, metadata={"team": "a", "env": "prod"})
    b = new_job(services, org, training_file, metadata={"team": "b", "env": "prod"})
    new_job(services, org, training_file)

    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "a"})] == [a]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"env": "prod"})] == [b, a]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"env": "prod", "team": "b"})] == [b]
    assert list(client.fine_tuning.jobs.list(metadata={"team": "c"})) == []


def test_retrieve_unknown_job_answers_404_with_param_id(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    assert raised.value.param == "id"
    assert raised.value.body["message"].startswith("Could not find fine-tune: ftjob-doesnotexist")


STATUSES = ["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
# (action, status before) -> status after, or None for 400
EXPECTED = {
    "cancel": dict.fromkeys(["validating_files", "queued", "running", "paused"], "cancelled"),
    "pause": {"queued": "paused", "running": "paused"},
    "resume": {"paused": "queued"},
}


@pytest.mark.parametrize("action", ["cancel", "pause", "resume"])
@pytest.mark.parametrize("status", STATUSES)
def test_state_table_of_cancel_pause_resume(client, services, org, training_file, action, status):
    job_id = job_in(status, services, org, training_file)
    assert client.fine_tuning.jobs.retrieve(job_id).status == status
    after = EXPECTED[action].get(status)
    call = getattr(client.fine_tuning.jobs, action)
    if after is None:
        with pytest.raises(openai.BadRequestError) as raised:
            call(job_id)
        assert f"'{status}'" in raised.value.body["message"]
        assert client.fine_tuning.jobs.retrieve(job_id).status == status
        return
    job = call(job_id)
    assert job.status == after
    assert client.fine_tuning.jobs.retrieve(job_id).status == after
    assert (job.finished_at is not None) == (after == "cancelled")
    latest = client.fine_tuning.jobs.list_events(job_id, limit=1).data[0].message
    assert latest.startswith(
        {"cancel": "Fine-tuning job cancelled", "pause": "Fine-tuning job paused"}.get(
            action, "Fine-tuning job resumed"
        )
    )


def test_cancel_keeps_checkpoints_and_reports_no_model(client, services, org, training_file):
    job_id = job_in("running", services, org, training_file)
    generation = generation_of(services, job_id)
    name = services.runtime.record_checkpoint(job_id, generation, step=5, metrics={}, path="c5")
    job = client.fine_tuning.jobs.cancel(job_id)
    assert (job.status, job.fine_tuned_model, job.result_files) == ("cancelled", None, [])
    # the worker learns of it on its next heartbeat and stops
    assert services.runtime.heartbeat(job_id, generation, LEASE) == "cancelled"
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
    assert [c.fine_tuned_model_checkpoint for c in checkpoints] == [name]


def test_cancel_unknown_job_answers_404(client):
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.cancel("ftjob-doesnotexist")


def test_succeeded_job_reports_model_result_file_and_resolved_hyperparameters(
    client, services, org, training_file
):
    job = client.fine_tuning.jobs.retrieve(job_in("succeeded", services, org, training_file))
    assert job.status == "succeeded" and job.fine_tuned_model.startswith(
        f"ft:{DEFAULT_BASE_MODEL}:personal::"
    )
    assert job.hyperparameters.model_dump() == {
        "n_epochs": 1,
        "batch_size": 1,
        "learning_rate_multiplier": 1.0,
    }
    assert job.method.supervised.hyperparameters.n_epochs == 1
    assert (job.trained_tokens, len(job.result_files)) == (200, 1)
    assert client.files.retrieve(job.result_files[0]).purpose == "fine-tune-results"
    assert job.error.model_dump() == {"code": None, "message": None, "param": None}
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert messages[:2] == [
        "The job has successfully completed",
        f"New fine-tuned model created: {job.fine_tuned_model}",
    ]
    assert messages[-1] == f"Created fine-tuning job: {job.id}"


def test_failed_job_reports_its_error(client, services, org, training_file):
    job = client.fine_tuning.jobs.retrieve(job_in("failed", services, org, training_file))
    assert job.error.model_dump() == {
        "code": "invalid_n_examples",
        "message": "too few",
        "param": "training_file",
    }
    assert job.finished_at is None


def test_events_paginate_newest_first_through_57(client, services, org, training_file):
    job_id = new_job(services, org, training_file)
    claim = services.runtime.claim("w", LEASE)
    for i in range(55):
        assert services.runtime.add_event(job_id, claim.generation, f"event {i}", data={"i": i})

    first = client.fine_tuning.jobs.list_events(job_id)
    assert len(first.data) == 20 and first.has_more
    assert first.data[0].message == "event 54" and first.data[0].data == {"i": 54}
    everything = list(client.fine_tuning.jobs.list_events(job_id))
    assert [e.message for e in everything] == [f"event {i}" for i in range(54, -1, -1)] + [
        f"Validating training file: {training_file}",
        f"Created fine-tuning job: {job_id}",
    ]
    assert len({e.id for e in everything}) == 57
    end = client.fine_tuning.jobs.list_events(job_id, after=everything[-1].id)
    assert (end.data, end.has_more) == ([], False)


def test_events_of_unknown_job_answer_404(client):
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.list_events("ftjob-doesnotexist")


def test_checkpoints_list_newest_first_with_first_and_last_id(client, http, services, org, training_file):
    job_id = job_in("running", services, org, training_file)
    generation = generation_of(services, job_id)
    names = [
        services.runtime.record_checkpoint(
            job_id, generation, step=step, metrics={"train_loss": 1 / step}, path=f"c{step}"
        )
        for step in (5, 10, 15)
    ]
    page = client.fine_tuning.jobs.checkpoints.list(job_id)
    assert [c.fine_tuned_model_checkpoint for c in page.data] == names[::-1]
    assert [c.step_number for c in page.data] == [15, 10, 5]
    assert page.data[0].metrics.train_loss == pytest.approx(1 / 15)
    assert page.data[0].fine_tuning_job_id == job_id and not page.has_more
    raw = http.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"limit": 2}).json()
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (page.data[0].id, page.data[1].id, True)
    rest = client.fine_tuning.jobs.checkpoints.list(job_id, after=page.data[1].id)
    assert [c.step_number for c in rest.data] == [5]


def test_checkpoints_of_a_new_job_are_empty(http, services, org, training_file):
    job_id = new_job(services, org, training_file)
    body = http.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()
    assert (body["data"], body["first_id"], body["last_id"], body["has_more"]) == ([], None, None, False)
