"""Webhooks for job outcomes: each terminal event reaches a loopback receiver once, signed so that the
openai SDK's ``client.webhooks.unwrap`` verifies it; failed attempts are retried with backoff under
the same ``webhook-id`` and listed attempt by attempt; a delivery that keeps failing gives up."""

from __future__ import annotations

import json
import time

import openai
import pytest
from sqlalchemy import select
from webhook_receiver import Receiver

from openft.services.webhooks import WebhookDispatcher
from openft.settings import Settings
from openft.store.tables import JobRow, WebhookDeliveryRow
from openft.worker.loop import Worker

BASE = "tiny-llama"


def _examples(n: int = 12) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Say the word (#{i})"},
                {"role": "assistant", "content": "ok"},
            ]
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def settings(tmp_path, monkeypatch, tiny_model_dir) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'openft.db'}",
        base_models={BASE: str(tiny_model_dir)},
        lease_seconds=30.0,
        heartbeat_seconds=1.0,
        poll_seconds=0.2,
        webhook_retry_seconds=(60.0, 600.0),
        webhook_timeout_seconds=5.0,
    )


@pytest.fixture
def dispatcher(services) -> WebhookDispatcher:
    return WebhookDispatcher(services, sender="test-sender")


def _create(client, data: bytes = b""):
    training = client.files.create(file=("t.jsonl", data or _examples()), purpose="fine-tune")
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}
    return client.fine_tuning.jobs.create(model=BASE, training_file=training.id, method=method)


def _unwrap(client, received, secret: str):
    return client.webhooks.unwrap(received.body, received.headers, secret=secret)


def test_each_terminal_event_arrives_once_and_verifies_with_the_sdk(client, services, dispatcher):
    org = services.organizations.ensure_default().id
    with Receiver() as receiver:
        endpoint = services.webhooks.add_endpoint(org, receiver.url)
        other = services.webhooks.add_endpoint(services.organizations.ensure("other").id, receiver.url)
        assert endpoint.secret.startswith("whsec_") and other.secret != endpoint.secret

        cancelled = _create(client)
        client.fine_tuning.jobs.cancel(cancelled.id)
        failed = _create(client, b'{"messages": [{"role": "user", "content": "no answer"}]}\n' * 12)
        succeeded = _create(client)
        assert Worker(services).run(burst=True) == 3  # validate x2 (one fails), train x1
        assert client.fine_tuning.jobs.retrieve(succeeded.id).status == "succeeded"
        assert client.fine_tuning.jobs.retrieve(failed.id).status == "failed"

        assert dispatcher.run_once() == 3
        assert dispatcher.run_once() == 0  # nothing is sent twice
        assert receiver.count() == 3
        events = {}
        for received in receiver.received:
            event = _unwrap(client, received, endpoint.secret)
            assert received.headers["webhook-id"] == event.id and event.id.startswith("evt_")
            assert event.object == "event" and isinstance(event.created_at, int)
            events[event.type] = event.data.id
            with pytest.raises(openai.InvalidWebhookSignatureError):
                _unwrap(client, received, other.secret)
        assert events == {
            "fine_tuning.job.cancelled": cancelled.id,
            "fine_tuning.job.failed": failed.id,
            "fine_tuning.job.succeeded": succeeded.id,
        }
        body = json.loads(receiver.received[0].body)
        assert set(body) == {"id", "object", "type", "created_at", "data"} and set(body["data"]) == {"id"}
        attempts = services.webhooks.attempts(endpoint.id)
        assert [(a.attempt_number, a.status_code, a.succeeded) for a in attempts] == [(1, 200, True)] * 3


def test_the_outbox_row_commits_with_the_status_change_and_only_for_subscribers(client, services):
    org = services.organizations.ensure_default().id
    only_success = services.webhooks.add_endpoint(
        org, "http://127.0.0.1:9/never", ["fine_tuning.job.succeeded"]
    )
    every = services.webhooks.add_endpoint(org, "http://127.0.0.1:9/never")
    job = _create(client)
    assert services.webhooks.pending(every.id) == []
    client.fine_tuning.jobs.cancel(job.id)
    (delivery,) = services.webhooks.pending(every.id)
    assert services.webhooks.pending(only_success.id) == []
    assert (delivery.type, delivery.payload["data"], delivery.attempts) == (
        "fine_tuning.job.cancelled",
        {"id": job.id},
        0,
    )
    with services.db.transaction() as session:
        status = session.scalar(select(JobRow.status).where(JobRow.id == job.id))
    assert status == "cancelled"


def test_failed_attempts_are_retried_with_backoff_under_the_same_id(client, services, dispatcher):
    org = services.organizations.ensure_default().id
    with Receiver(plan=["fail", "fail"]) as receiver:
        endpoint = services.webhooks.add_endpoint(org, receiver.url)
        job = _create(client)
        client.fine_tuning.jobs.cancel(job.id)

        assert dispatcher.run_once() == 1
        (waiting,) = services.webhooks.pending(endpoint.id)
        assert waiting.attempts == 1 and waiting.next_attempt_at >= time.time() + 50  # first delay: 60 s
        assert dispatcher.run_once() == 0  # not due yet
        assert dispatcher.run_once(now=waiting.next_attempt_at + 1) == 1
        (waiting,) = services.webhooks.pending(endpoint.id)
        assert waiting.attempts == 2 and waiting.next_attempt_at >= time.time() + 500  # then 600 s
        assert dispatcher.run_once(now=waiting.next_attempt_at + 1) == 1
        assert services.webhooks.pending(endpoint.id) == []

        ids = {r.headers["webhook-id"] for r in receiver.received}
        assert len(receiver.received) == 3 and len(ids) == 1
        for received in receiver.received:
            assert _unwrap(client, received, endpoint.secret).data.id == job.id
        attempts = services.webhooks.attempts(endpoint.id)
        assert [(a.attempt_number, a.status_code, a.succeeded) for a in attempts] == [
            (1, 500, False),
            (2, 500, False),
            (3, 200, True),
        ]
        assert attempts[0].error.startswith("HTTP 500") and {a.delivery_status for a in attempts} == {
            "delivered"
        }


def test_a_delivery_gives_up_after_its_last_retry(client, services, dispatcher):
    org = services.organizations.ensure_default().id
    with Receiver(plan=["fail"] * 5) as receiver:
        endpoint = services.webhooks.add_endpoint(org, receiver.url)
        client.fine_tuning.jobs.cancel(_create(client).id)
        # Seen from a day later every retry is due: the first attempt and two retries, then it stops.
        day_later = time.time() + 86_400
        assert dispatcher.run_once(now=day_later) == 3
        assert dispatcher.run_once(now=day_later + 86_400) == 0
        assert receiver.count() == 3
    with services.db.transaction() as session:
        (status,) = session.scalars(select(WebhookDeliveryRow.status)).all()
    assert status == "failed"
    assert [a.delivery_status for a in services.webhooks.attempts(endpoint.id)] == ["failed"] * 3


def test_an_unreachable_endpoint_is_a_failed_attempt_not_a_crash(client, services, dispatcher):
    org = services.organizations.ensure_default().id
    with Receiver() as receiver:
        url = receiver.url
    endpoint = services.webhooks.add_endpoint(org, url)  # the receiver is gone: connection refused
    client.fine_tuning.jobs.cancel(_create(client).id)
    assert dispatcher.run_once() == 1
    (attempt,) = services.webhooks.attempts(endpoint.id)
    assert attempt.status_code is None and not attempt.succeeded and "Connect" in attempt.error
    assert attempt.delivery_status == "pending"


def test_endpoint_checks_and_removal(services):
    org = services.organizations.ensure_default().id
    with pytest.raises(Exception, match="http"):
        services.webhooks.add_endpoint(org, "ftp://example.invalid/x")
    with pytest.raises(Exception, match="Unknown event type"):
        services.webhooks.add_endpoint(org, "http://127.0.0.1:9/x", ["fine_tuning.job.started"])
    endpoint = services.webhooks.add_endpoint(org, "http://127.0.0.1:9/x")
    assert [e.id for e in services.webhooks.list_endpoints(org)] == [endpoint.id]
    services.webhooks.remove_endpoint(endpoint.id)
    assert services.webhooks.list_endpoints() == []
