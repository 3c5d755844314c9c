"""Files and Uploads in an S3 bucket (a real S3-protocol server, PostgreSQL) through the official SDK:
what lands in the bucket, streamed in parts both ways, composed inside the bucket, never half-written,
and swept when orphaned."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import openai
import pytest
from stored import stored_blobs

from openft.services.context import Services
from openft.settings import Settings, SettingsError
from openft.store.s3 import PART_BYTES, StorageUrlError

pytestmark = pytest.mark.postgres
MIB = 1024 * 1024


@pytest.fixture
def settings(tmp_path, monkeypatch, postgres_url, s3_storage) -> Settings:
    home = tmp_path / "openft-home"
    monkeypatch.setenv("OPENFT_HOME", str(home))
    return Settings(home=home, database_url=postgres_url, **s3_storage)


def _bucket(settings: Settings) -> tuple[str, str]:
    bucket, _, prefix = settings.storage_url.removeprefix("s3://").partition("/")
    return bucket, prefix + "/"


def _objects(s3, settings: Settings) -> dict[str, dict]:
    bucket, prefix = _bucket(settings)
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {item["Key"][len(prefix) :]: item for item in listed.get("Contents", ())}


def _multipart_uploads(s3, settings: Settings) -> list[dict]:
    bucket, _ = _bucket(settings)
    return s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_a_file_is_one_object_under_the_prefix_with_the_recorded_checksum(client, services, settings, s3):
    data = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n' * 5
    created = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    objects = _objects(s3, settings)
    assert list(objects) == [f"files/{created.id}"]
    assert objects[f"files/{created.id}"]["Size"] == len(data) == created.bytes
    row = services.files.get(services.auth.default_organization_id(), created.id)
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    # A training process reads it from this machine's cache, not from the bucket.
    local = services.files.local_path(row)
    assert local.read_bytes() == data and settings.cache_dir in local.parents


def test_a_large_file_streams_into_a_multipart_object_and_streams_back(client, settings, s3):
    data = os.urandom(2 * PART_BYTES + 3 * MIB)
    created = client.files.create(file=("blob.bin", data), purpose="user_data")
    stored = _objects(s3, settings)[f"files/{created.id}"]
    # Sent part by part (S3's ETag of a multipart object ends in the number of parts): no request
    # held the whole file.
    assert stored["ETag"].strip('"').endswith("-3")
    assert stored["Size"] == len(data)
    with client.files.with_streaming_response.content(created.id) as response:
        chunks = list(response.iter_bytes())
    assert b"".join(chunks) == data
    assert _multipart_uploads(s3, settings) == []


def test_a_file_over_the_limit_leaves_no_object_and_no_unfinished_multipart_upload(app, client, s3):
    services = app.state.services
    services.settings = services.settings.with_(max_file_bytes=PART_BYTES + MIB)
    services.__dict__.pop("files", None)
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.bin", os.urandom(PART_BYTES + 2 * MIB)), purpose="user_data")
    assert caught.value.status_code == 413
    assert stored_blobs(services) == set()
    assert _multipart_uploads(s3, services.settings) == []  # its first part had been sent: aborted


def test_an_upload_of_large_parts_is_composed_inside_the_bucket(client, services, settings, s3):
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), b"tail"]
    data = b"".join(parts)
    upload = client.uploads.create(
        bytes=len(data), filename="d.bin", mime_type="application/octet-stream", purpose="user_data"
    )
    ids = [client.uploads.parts.create(upload.id, data=part).id for part in parts]
    assert {f"files/{i}" for i in ids} <= set(_objects(s3, settings))
    done = client.uploads.complete(upload.id, part_ids=ids, md5=hashlib.md5(data).hexdigest())
    assert done.status == "completed"
    objects = _objects(s3, settings)
    assert list(objects) == [f"files/{done.file.id}"]  # the parts are gone
    # Three parts copied inside S3 (streamed through, the 10 MiB would make two 8 MiB-bounded parts).
    assert objects[f"files/{done.file.id}"]["ETag"].strip('"').endswith("-3")
    assert client.files.content(done.file.id).content == data
    row = services.files.get(services.auth.default_organization_id(), done.file.id)
    assert row.sha256 == hashlib.sha256(data).hexdigest()


def test_an_upload_with_a_wrong_md5_keeps_its_parts_and_leaves_no_file(client, settings, s3):
    parts = [os.urandom(5 * MIB), b"tail"]
    upload = client.uploads.create(
        bytes=sum(map(len, parts)), filename="d.bin", mime_type="x", purpose="user_data"
    )
    ids = [client.uploads.parts.create(upload.id, data=part).id for part in parts]
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.complete(upload.id, part_ids=ids, md5="0" * 32)
    assert caught.value.param == "md5"
    assert set(_objects(s3, settings)) == {f"files/{i}" for i in ids}
    assert _multipart_uploads(s3, settings) == []


def test_the_sweep_removes_orphan_objects_and_abandoned_multipart_uploads(client, services, settings, s3):
    kept = client.files.create(file=("a.txt", b"kept"), purpose="user_data")
    bucket, prefix = _bucket(settings)
    raw = s3.client()
    raw.put_object(Bucket=bucket, Key=f"{prefix}files/file-orphan", Body=b"crashed before its row")
    raw.create_multipart_upload(Bucket=bucket, Key=f"{prefix}files/file-crashed")
    # All too young: another replica may be writing them (and the sweep sees the upload a first time).
    assert services.storage.sweep().total == 0
    report = services.storage.sweep(now=time.time() + 2 * 3600)
    assert (report.orphan_blobs, report.temporaries) == (1, 1)
    assert list(_objects(s3, settings)) == [f"files/{kept.id}"]
    assert _multipart_uploads(s3, settings) == []
    assert client.files.content(kept.id).content == b"kept"


def test_storage_settings_are_read_from_the_environment():
    settings = Settings.from_env(
        {
            "OPENFT_HOME": "home",
            "OPENFT_STORAGE_URL": "s3://acme/openft/prod",
            "OPENFT_S3_ENDPOINT_URL": "http://minio:9000",
            "OPENFT_CACHE_MAX_GIB": "1.5",
        }
    )
    assert (settings.storage_url, settings.s3_endpoint_url) == ("s3://acme/openft/prod", "http://minio:9000")
    assert settings.cache_max_bytes == 3 * 1024**3 // 2
    assert settings.cache_dir == settings.home / "cache"
    assert Settings.from_env({"OPENFT_HOME": "home"}).storage_url is None


def test_a_bad_storage_url_is_refused_when_settings_are_read():
    with pytest.raises(SettingsError, match="s3://bucket"):
        Settings.from_env({"OPENFT_HOME": "home", "OPENFT_STORAGE_URL": "https://bucket/prefix"})


def test_a_bucket_that_does_not_exist_fails_at_start_up_naming_it(settings):
    missing = settings.with_(storage_url="s3://openft-no-such-bucket/x")
    with pytest.raises(StorageUrlError, match="openft-no-such-bucket"):
        Services.build(missing)


def test_two_replicas_sweeping_one_bucket_at_once_remove_each_thing_once(client, services, settings, s3):
    expiring = {"anchor": "created_at", "seconds": 3600}
    files = [
        client.files.create(file=(f"{i}.txt", b"x" * 10), purpose="user_data", expires_after=expiring)
        for i in range(4)
    ]
    for _ in range(4):
        upload = client.uploads.create(bytes=8, filename="u.bin", mime_type="x", purpose="user_data")
        client.uploads.parts.create(upload.id, data=b"half")
    bucket, prefix = _bucket(settings)
    for i in range(4):
        s3.client().put_object(Bucket=bucket, Key=f"{prefix}files/file-orphan{i}", Body=b"no row")
    later = time.time() + 2 * 3600
    other = Services.build(settings)  # a second API replica: same database, same bucket
    try:
        reports = []
        start = threading.Barrier(2)

        def sweep(replica: Services) -> None:
            start.wait()
            reports.append(replica.storage.sweep(now=later))

        threads = [threading.Thread(target=sweep, args=(replica,)) for replica in (services, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.close()
    assert len(reports) == 2
    assert sum(r.expired_uploads for r in reports) == 4
    assert sum(r.upload_parts for r in reports) == 4
    assert sum(r.expired_files for r in reports) == len(files)
    # An orphan both replicas saw is deleted by both (S3 deletes are idempotent); each is gone.
    assert 4 <= sum(r.orphan_blobs for r in reports) <= 8
    assert _objects(s3, settings) == {}
