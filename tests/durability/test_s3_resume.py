"""Durability with object storage: a worker process on one machine is SIGKILLed mid-training, and a
worker on another machine (its own OPENFT_HOME: no job directory, an empty cache) resumes the job
from the checkpoint in the bucket and ends with exactly the adapter of an uninterrupted run."""

from __future__ import annotations

import signal

import pytest
from fleet import alive, wait_for
from ledger import (
    ADAPTER_FILE,
    assert_events_complete_and_ordered,
    assert_same_adapter,
    create_job,
    load_adapter,
    messages,
    resumed_from,
    twin_adapter,
)

from openft.settings import Settings
from openft.store.artifacts import MANIFEST
from openft.worker.loop import Worker

pytestmark = pytest.mark.postgres


@pytest.fixture
def settings(settings, s3_storage) -> Settings:
    """The durability settings (PostgreSQL, short leases, checkpoints every second) on a bucket."""
    return settings.with_(**s3_storage)


def test_sigkill_then_another_machine_resumes_from_the_bucket_with_an_empty_cache(
    client, services, settings, start_worker, tmp_path
):
    job = create_job(client, n=12, n_epochs=3, seed=23)
    machine_a = settings.with_(home=tmp_path / "machine-a")
    worker = start_worker(settings=machine_a)
    wait_for(
        lambda: services.artifacts.latest_checkpoint(job.id), timeout=120, what="a checkpoint in the bucket"
    )
    child = wait_for(worker.child, what="the training child")
    worker.signal(signal.SIGKILL)
    wait_for(lambda: not alive(child), timeout=10, what="the orphaned child to die")
    step, _ = services.artifacts.latest_checkpoint(job.id)
    assert 0 < step < 36

    assert wait_for(lambda: services.runtime.expire_leases(3), timeout=15, what="lease expiry") == [job.id]
    assert any("was lost (attempt 1 of 3)" in m for m in messages(services, job.id))

    # Machine B is this process: nothing of the job on its disk, nothing in its cache.
    assert not (settings.models_dir / "jobs" / job.id).exists()
    assert not settings.cache_dir.exists() or services.artifacts.cache.entries() == []
    Worker(services).run(burst=True)

    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert resumed_from(services, job.id) == [step]
    assert_events_complete_and_ordered(services, job.id, 36)
    final = services.artifacts.local_dir(f"jobs/{job.id}/final")
    assert_same_adapter(
        load_adapter(final / ADAPTER_FILE.relative_to("final")), twin_adapter(final, tmp_path)
    )

    # What is left in the bucket: the trees the database names, each complete, and no unfinished
    # multipart upload (after a sweep that sees anything the killed worker left half-sent).
    keys = services.runtime.artifact_keys(job.id)
    trees = {
        name.removeprefix("models/").removesuffix(f"/{MANIFEST}")
        for name, _, _ in services.artifacts.bucket.list(f"models/jobs/{job.id}/")
        if name.endswith(f"/{MANIFEST}")
    }
    assert trees == keys
    services.storage.sweep()
    services.storage.sweep(now=job.finished_at + 2 * 3600)
    bucket = services.artifacts.bucket
    assert bucket.client.list_multipart_uploads(Bucket=bucket.name).get("Uploads", []) == []
    for key in keys:
        live = services.artifacts.manifest(key)["upload"]
        names = [name for name, _, _ in bucket.list(f"models/{key}/")]
        assert all(n.endswith(MANIFEST) or f"/{live}/" in n for n in names), names
