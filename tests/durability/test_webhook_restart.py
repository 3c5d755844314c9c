"""Webhook delivery survives the API: a receiver fails the first attempt, the API is killed while
the second is in flight, and the restarted API delivers the event, with the same ``webhook-id``,
verified by the openai SDK's ``client.webhooks.unwrap``."""

from __future__ import annotations

import pytest
from fleet import ApiProcess, wait_for
from ledger import BASE, examples
from webhook_receiver import Receiver

pytestmark = pytest.mark.postgres


def test_webhook_retries_survive_a_failing_receiver_and_an_api_restart(settings, services, client, tmp_path):
    # Quick retries so the test needs no clock tricks; a timeout long enough that the kill lands
    # while the second attempt is still in flight (its lease then lapses after timeout + 5 s).
    api_settings = settings.with_(
        webhook_retry_seconds=(0.2, 0.2, 0.2, 0.2), webhook_timeout_seconds=5.0, webhook_poll_seconds=0.2
    )
    org = services.organizations.ensure_default().id
    with Receiver(plan=["fail", "hang"]) as receiver:
        endpoint = services.webhooks.add_endpoint(org, receiver.url)
        training = client.files.create(file=("t.jsonl", examples(12)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=BASE, training_file=training.id)
        client.fine_tuning.jobs.cancel(job.id)

        first = ApiProcess(api_settings, tmp_path / "api.sock", tmp_path / "api-1.log")
        first.start()
        try:
            wait_for(lambda: receiver.count() >= 2, timeout=60, what="the first two attempts")
        finally:
            first.kill()  # SIGKILL while the second attempt waits for an answer: it is never recorded
        (attempt,) = services.webhooks.attempts(endpoint.id)
        assert (attempt.status_code, attempt.succeeded) == (500, False)

        second = ApiProcess(api_settings, tmp_path / "api.sock", tmp_path / "api-2.log")
        second.start()
        try:
            wait_for(lambda: not services.webhooks.pending(endpoint.id), timeout=90, what="the delivery")
        finally:
            second.kill()

    assert receiver.count() == 3
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    event = client.webhooks.unwrap(
        receiver.received[-1].body, receiver.received[-1].headers, secret=endpoint.secret
    )
    assert (event.type, event.data.id) == ("fine_tuning.job.cancelled", job.id)
    attempts = services.webhooks.attempts(endpoint.id)
    assert [(a.status_code, a.succeeded, a.delivery_status) for a in attempts] == [
        (500, False, "delivered"),
        (200, True, "delivered"),
    ]
