"""Storage does not leak, on SQLite and PostgreSQL: the sweep removes expired uploads and their
parts, expired files (not those an unfinished job reads), orphan blobs and crashed temporaries,
and two replicas sweeping the same database and disk at once remove each thing exactly once."""

from __future__ import annotations

import os
import threading
import time

import openai
import pytest
from starlette.testclient import TestClient

from openft.api.app import create_app
from openft.services.context import Services
from openft.services.storage import SweepReport
from openft.settings import DEFAULT_BASE_MODEL, Settings

LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
DATA = LINE * 10
HOUR = 3600


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(home=tmp_path / "openft-home", database_url=database_url)


def _stored(services) -> set[str]:
    root = services.blobs.root
    return {p.name for p in root.iterdir() if p.name != ".tmp"} | {p.name for p in (root / ".tmp").iterdir()}


def _upload(client, *chunks: bytes):
    upload = client.uploads.create(
        bytes=sum(map(len, chunks)), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    return upload, [client.uploads.parts.create(upload.id, data=c).id for c in chunks]


def test_nothing_is_swept_before_it_expires(client, services):
    kept_file = client.files.create(
        file=("t.jsonl", DATA), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": HOUR}
    )
    upload, parts = _upload(client, DATA)
    (services.blobs.root / ".tmp" / "in-flight").write_bytes(b"being written")
    assert services.storage.sweep() == SweepReport()
    assert _stored(services) == {kept_file.id, *parts, "in-flight"}
    assert client.uploads.complete(upload.id, part_ids=parts).status == "completed"


def test_expired_upload_is_marked_expired_and_its_parts_removed(client, services):
    upload, parts = _upload(client, DATA[:300], DATA[300:])
    done, done_parts = _upload(client, DATA)
    file = client.uploads.complete(done.id, part_ids=done_parts).file
    report = services.storage.sweep(now=upload.expires_at)
    assert (report.expired_uploads, report.upload_parts) == (1, 2)  # the completed one is left alone
    assert _stored(services) == {file.id}
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.complete(upload.id, part_ids=parts)
    assert "expired" in raised.value.message
    assert services.storage.sweep(now=upload.expires_at).expired_uploads == 0  # once only


def test_expired_file_is_deleted_unless_an_unfinished_job_reads_it(client, services):
    expiring = {"anchor": "created_at", "seconds": HOUR}
    training = client.files.create(file=("t.jsonl", DATA), purpose="fine-tune", expires_after=expiring)
    unused = client.files.create(file=("u.jsonl", DATA), purpose="fine-tune", expires_after=expiring)
    forever = client.files.create(file=("f.jsonl", DATA), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=DEFAULT_BASE_MODEL, training_file=training.id)

    later = training.expires_at + 1
    assert services.storage.sweep(now=later).expired_files == 1
    assert _stored(services) == {training.id, forever.id}
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(unused.id)

    client.fine_tuning.jobs.cancel(job.id)  # finished: nothing reads its file any more
    assert services.storage.sweep(now=later).expired_files == 1
    assert _stored(services) == {forever.id}
    assert client.files.content(forever.id).content == DATA


def test_orphan_blobs_and_crashed_temporaries_are_swept_after_the_grace_period(client, services, monkeypatch):
    kept = client.files.create(file=("k.jsonl", DATA), purpose="fine-tune")
    upload, parts = _upload(client, DATA)
    deleted = client.files.create(file=("d.jsonl", DATA), purpose="fine-tune")
    # A crash after the row's deletion committed, before the blob went: the blob is an orphan.
    real_delete = services.blobs.delete
    monkeypatch.setattr(services.blobs, "delete", lambda key: None)
    client.files.delete(deleted.id)
    monkeypatch.setattr(services.blobs, "delete", real_delete)
    (services.blobs.root / ".tmp" / "crashed").write_bytes(b"half a file")
    (services.blobs.root / "file-orphanAfterCrash").write_bytes(b"no row")
    assert _stored(services) == {kept.id, *parts, deleted.id, "crashed", "file-orphanAfterCrash"}

    assert services.storage.sweep().total == 0  # all fresh: another replica may be mid-request
    two_hours_ago = time.time() - 2 * HOUR
    for name in (kept.id, *parts, deleted.id, ".tmp/crashed", "file-orphanAfterCrash"):
        os.utime(services.blobs.root / name, (two_hours_ago, two_hours_ago))
    report = services.storage.sweep()
    assert (report.orphan_blobs, report.temporaries) == (2, 1)
    assert _stored(services) == {kept.id, *parts}
    assert client.uploads.complete(upload.id, part_ids=parts).status == "completed"


def test_two_replicas_sweeping_at_once_remove_each_thing_once(client, services, settings):
    expiring = {"anchor": "created_at", "seconds": HOUR}
    files = [
        client.files.create(file=(f"{i}.jsonl", DATA), purpose="fine-tune", expires_after=expiring)
        for i in range(6)
    ]
    uploads = [_upload(client, DATA[:100], DATA[100:]) for _ in range(6)]
    for i in range(6):
        (services.blobs.root / ".tmp" / f"crashed-{i}").write_bytes(b"x")
        (services.blobs.root / f"part_orphan{i}").write_bytes(b"x")
    later = time.time() + 2 * HOUR
    other = Services.build(settings)  # a second API replica: same database, same disk
    try:
        reports: list[SweepReport] = []
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def sweep(replica: Services) -> None:
            try:
                start.wait()
                reports.append(replica.storage.sweep(now=later))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=sweep, args=(replica,)) for replica in (services, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.close()
    assert errors == []
    assert sum(r.expired_uploads for r in reports) == 6
    assert sum(r.upload_parts for r in reports) == 12
    assert sum(r.expired_files for r in reports) == len(files)
    assert _stored(services) == set()
    assert len(uploads) == 6


def test_the_api_process_sweeps_in_the_background(settings, tmp_path):
    app = create_app(settings.with_(sweep_interval_seconds=0.05))
    services = app.state.services
    crashed = services.blobs.root / ".tmp" / "crashed"
    crashed.write_bytes(b"half a file")
    two_hours_ago = time.time() - 2 * HOUR
    os.utime(crashed, (two_hours_ago, two_hours_ago))
    try:
        with TestClient(app):  # runs the lifespan, as uvicorn does
            deadline = time.monotonic() + 30
            while crashed.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        assert not crashed.exists()
    finally:
        services.close()
