"""The worker survives a database that drops connections: writes are retried, a lost lease is not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from openft.services.job_runtime import LeaseLost
from openft.settings import Settings
from openft.worker.gpus import FixedInventory
from openft.worker.lease import LeaseKeeper
from openft.worker.loop import Worker
from openft.worker.retry import PatientRuntime


class Flaky:
    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def record_metrics(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return True


def test_a_write_that_fails_transiently_is_retried_until_it_succeeds():
    flaky = Flaky(2, ConnectionError("server closed the connection unexpectedly"))
    assert PatientRuntime(flaky, backoff_seconds=0).record_metrics("job", 1, step=3) is True
    assert flaky.calls == 3


def test_a_lost_lease_is_not_retried_and_persistent_failures_surface():
    lost = Flaky(5, LeaseLost("job"))
    with pytest.raises(LeaseLost):
        PatientRuntime(lost, backoff_seconds=0).record_metrics("job", 1)
    assert lost.calls == 1

    down = Flaky(10, ConnectionError("down"))
    with pytest.raises(ConnectionError):
        PatientRuntime(down, attempts=3, backoff_seconds=0).record_metrics("job", 1)
    assert down.calls == 3


def test_the_worker_loop_outlives_a_failing_database(tmp_path):
    class Runtime:
        claims = 0
        training_claims = 0

        def expire_leases(self, max_attempts):
            return []

        def claim_validation(self, worker_id, lease_seconds):
            Runtime.claims += 1
            if Runtime.claims <= 2:
                raise ConnectionError("database restarting")
            return None

        def claim_training(self, worker_id, lease_seconds, **fits):
            Runtime.training_claims += 1
            return None

    class Registry:
        """The workers registry is away too: the worker runs without its row."""

        def register(self, worker):
            raise ConnectionError("database restarting")

        heartbeat = register

        def deregister(self, worker_id):
            raise ConnectionError("database restarting")

    settings = Settings(home=tmp_path, database_url="sqlite://", poll_seconds=0.01)
    services = SimpleNamespace(settings=settings, runtime=Runtime(), workers=Registry())
    runtime = PatientRuntime(services.runtime, attempts=1, backoff_seconds=0)
    worker = Worker(services, seam=object(), launcher=object(), inventory=FixedInventory([]), runtime=runtime)

    # Two failing rounds are logged and survived; the third finds the queue empty and, in burst
    # mode, returns.
    for _ in range(2):
        assert worker.run(burst=True) == 0
    assert worker.run(burst=True) == 0
    assert (Runtime.claims, Runtime.training_claims) == (3, 1)


class Unreachable:
    """A database the worker cannot reach: every heartbeat fails."""

    def heartbeat(self, job_id, generation, lease_seconds):
        raise ConnectionError("could not connect to server")


def test_a_lease_that_cannot_be_renewed_lapses_with_a_warning(caplog):
    keeper = LeaseKeeper(
        Unreachable(), "ftjob-1", 1, lease_seconds=0.3, heartbeat_seconds=0.1, poll_seconds=0.05
    )
    with caplog.at_level("WARNING", logger="openft.worker.lease"), keeper:
        assert keeper.lost.wait(5), "the keeper should give the job up once its lease lapsed"
    assert any("lease on ftjob-1 lapsed" in r.getMessage() for r in caplog.records), caplog.text
