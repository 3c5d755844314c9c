"""Model trees in a bucket (a real S3-protocol server) and the local cache they are read through:
complete or absent, checked file by file, bounded in size, deleted whole."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from openft.store.artifacts import MANIFEST, S3Artifacts, checkpoint_key
from openft.store.cache import CacheIntegrityError, Expected, LocalCache
from openft.store.s3 import S3Bucket, S3Location, connect


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".entry"
    }


@pytest.fixture
def bucket(s3_storage) -> S3Bucket:
    return S3Bucket(connect(s3_storage["s3_endpoint_url"]), S3Location.parse(s3_storage["storage_url"]))


@pytest.fixture
def artifacts(bucket, tmp_path) -> S3Artifacts:
    return S3Artifacts(bucket, LocalCache(tmp_path / "cache", 10**9), tmp_path / "models")


def _names(bucket: S3Bucket, prefix: str = "") -> list[str]:
    return sorted(name for name, _, _ in bucket.list(prefix))


CHECKPOINT = {"adapter/adapter_model.safetensors": os.urandom(3000), "state.pt": b"state", "COMPLETE": b"{}"}


def test_a_published_tree_comes_back_identical_through_the_cache(artifacts, bucket, tmp_path):
    local = _tree(tmp_path / "models/jobs/ftjob-1/checkpoints/step-4", CHECKPOINT)
    key = artifacts.key_for(local)
    assert key == checkpoint_key("ftjob-1", 4)
    artifacts.publish(local, key)
    manifest = artifacts.manifest(key)
    assert manifest["files"]["state.pt"] == {"bytes": 5, "sha256": hashlib.sha256(b"state").hexdigest()}
    fetched = artifacts.local_dir(key)
    assert _read_tree(fetched) == CHECKPOINT
    assert (tmp_path / "cache") in fetched.parents
    assert artifacts.latest_checkpoint("ftjob-1") == (4, key)


def test_a_tree_without_its_manifest_is_torn_and_never_read(artifacts, bucket, tmp_path):
    local = _tree(tmp_path / "models/jobs/ftjob-1/checkpoints/step-4", CHECKPOINT)
    artifacts.publish(local, checkpoint_key("ftjob-1", 4))
    newer = _tree(tmp_path / "models/jobs/ftjob-1/checkpoints/step-8", CHECKPOINT)

    def crash() -> None:
        raise KeyboardInterrupt  # the worker dies just before the manifest

    with pytest.raises(KeyboardInterrupt):
        artifacts.publish(newer, checkpoint_key("ftjob-1", 8), before_commit=crash)
    assert not any("step-8" in name for name in _names(bucket))  # what it had sent is removed
    # A crash that leaves files without a manifest: still not a checkpoint.
    bucket.put_bytes("models/jobs/ftjob-1/checkpoints/step-9/u1/state.pt", b"half")
    assert artifacts.latest_checkpoint("ftjob-1") == (4, checkpoint_key("ftjob-1", 4))
    with pytest.raises(FileNotFoundError):
        artifacts.local_dir(checkpoint_key("ftjob-1", 9))


def test_a_directory_that_vanished_is_never_published_as_an_empty_tree(artifacts, bucket, tmp_path):
    # A checkpoint saved again at its step is briefly absent locally; publishing it then must fail,
    # not commit a manifest with no files (every resume would take it and start from step 0).
    artifacts.publish(
        _tree(tmp_path / "models/jobs/ftjob-1/checkpoints/step-4", CHECKPOINT),
        "jobs/ftjob-1/checkpoints/step-4",
    )
    gone = tmp_path / "models/jobs/ftjob-1/checkpoints/step-8"
    with pytest.raises(FileNotFoundError):
        artifacts.publish(gone, checkpoint_key("ftjob-1", 8))
    assert not any("step-8" in name for name in _names(bucket))
    assert artifacts.latest_checkpoint("ftjob-1") == (4, checkpoint_key("ftjob-1", 4))


def test_publishing_a_key_again_replaces_the_tree_and_drops_the_old_files(artifacts, bucket, tmp_path):
    local = _tree(tmp_path / "models/jobs/ftjob-1/final", {"adapter/a.bin": b"one"})
    artifacts.publish(local, "jobs/ftjob-1/final")
    first = artifacts.manifest("jobs/ftjob-1/final")["upload"]
    (local / "adapter/a.bin").write_bytes(b"two")
    artifacts.publish(local, "jobs/ftjob-1/final")
    assert _read_tree(artifacts.local_dir("jobs/ftjob-1/final")) == {"adapter/a.bin": b"two"}
    assert not any(first in name for name in _names(bucket))


def test_a_corrupted_object_fails_the_integrity_check_and_leaves_no_entry(artifacts, bucket, tmp_path):
    local = _tree(tmp_path / "models/jobs/ftjob-1/final", {"adapter/a.bin": b"weights"})
    artifacts.publish(local, "jobs/ftjob-1/final")
    upload = artifacts.manifest("jobs/ftjob-1/final")["upload"]
    bucket.put_bytes(f"models/jobs/ftjob-1/final/{upload}/adapter/a.bin", b"weightz")  # same size
    with pytest.raises(CacheIntegrityError, match="sha256"):
        artifacts.local_dir("jobs/ftjob-1/final")
    assert artifacts.cache.entries() == []


def test_delete_removes_every_object_of_the_tree_manifest_first(artifacts, bucket, tmp_path):
    for step in (1, 2):
        local = _tree(tmp_path / f"models/jobs/ftjob-1/checkpoints/step-{step}", CHECKPOINT)
        artifacts.publish(local, checkpoint_key("ftjob-1", step))
    artifacts.delete(checkpoint_key("ftjob-1", 2))
    assert not any("step-2" in name for name in _names(bucket))
    assert artifacts.latest_checkpoint("ftjob-1") == (1, checkpoint_key("ftjob-1", 1))


def test_prune_keeps_what_the_database_names_and_the_newest(artifacts, bucket, tmp_path):
    for step in (3, 6, 9, 10):
        local = _tree(tmp_path / f"models/jobs/ftjob-1/checkpoints/step-{step}", CHECKPOINT)
        artifacts.publish(local, checkpoint_key("ftjob-1", step))
    kept = {checkpoint_key("ftjob-1", 6), checkpoint_key("ftjob-1", 9)}
    assert artifacts.prune_checkpoints("ftjob-1", kept) == 1  # step 3; step 10 is the newest
    steps = {name.split("/")[4] for name in _names(bucket, "models/jobs/ftjob-1/checkpoints/")}
    assert steps == {"step-6", "step-9", "step-10"}
    assert artifacts.prune_checkpoints("ftjob-1", kept, keep_latest=False) == 1
    assert artifacts.latest_checkpoint("ftjob-1") == (9, checkpoint_key("ftjob-1", 9))


def test_restore_places_a_checkpoint_whole_for_the_training_process(artifacts, tmp_path):
    local = _tree(tmp_path / "models/jobs/ftjob-1/checkpoints/step-4", CHECKPOINT)
    artifacts.publish(local, checkpoint_key("ftjob-1", 4))
    dest = tmp_path / "elsewhere/checkpoints/step-4"
    dest.parent.mkdir(parents=True)
    artifacts.restore(checkpoint_key("ftjob-1", 4), dest)
    assert _read_tree(dest) == CHECKPOINT
    assert [p.name for p in dest.parent.iterdir()] == ["step-4"]  # no temporary left beside it


# -- the cache on its own -------------------------------------------------------------------------


def _expect(data: bytes) -> Expected:
    return Expected(len(data), hashlib.sha256(data).hexdigest())


def test_the_cache_evicts_the_least_recently_used_entries_past_its_size(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=2500)
    blobs = {name: os.urandom(1000) for name in "abc"}
    downloads: list[str] = []

    def get(name: str) -> Path:
        def download(_: str):
            downloads.append(name)
            yield blobs[name]

        return cache.get(name, "v1", {"data": _expect(blobs[name])}, download)

    a = get("a")
    b = get("b")
    os.utime(a / ".entry", (1000, 1000))  # a used long ago, b after it (both beyond "in use")
    os.utime(b / ".entry", (2000, 2000))
    get("c")  # 3000 bytes > 2500: the least recently used (a) goes
    assert not a.exists()
    assert get("b").joinpath("data").read_bytes() == blobs["b"]
    assert downloads == ["a", "b", "c"]  # b was served from the cache
    assert sum(size for _, size, _ in cache.entries()) <= 2500


def test_a_damaged_cache_entry_is_downloaded_again(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=10**6)
    data = b"x" * 100
    entry = cache.get("k", "v1", {"data": _expect(data)}, lambda _: iter([data]))
    (entry / "data").write_bytes(b"x" * 50)  # truncated on disk
    again = cache.get("k", "v1", {"data": _expect(data)}, lambda _: iter([data]))
    assert (again / "data").read_bytes() == data
    record = json.loads((again / ".entry").read_text())
    assert record == {"key": "k", "version": "v1", "bytes": 100}


def test_manifest_is_the_last_object_a_publish_writes(artifacts, bucket, tmp_path, monkeypatch):
    order: list[str] = []
    put, put_bytes = bucket.put, bucket.put_bytes
    monkeypatch.setattr(bucket, "put", lambda name, *a, **k: (order.append(name), put(name, *a, **k))[1])
    monkeypatch.setattr(
        bucket, "put_bytes", lambda name, data: (order.append(name), put_bytes(name, data))[1]
    )
    local = _tree(tmp_path / "models/jobs/ftjob-1/final", {"a": b"1", "b/c": b"2"})
    artifacts.publish(local, "jobs/ftjob-1/final")
    assert order[-1] == f"models/jobs/ftjob-1/final/{MANIFEST}" and len(order) == 3


def test_a_writer_cuts_parts_that_grow_so_any_size_fits_in_s3s_ten_thousand_parts(monkeypatch):
    from openft.store import s3

    monkeypatch.setattr(s3, "PART_BYTES", 10)
    monkeypatch.setattr(s3, "PARTS_PER_SIZE", 2)
    writer = s3._Writer(S3Bucket(None, S3Location("b", "")), "x", None, ValueError)  # feeding sends nothing
    parts = writer.feed(b"a" * 95)
    assert [len(p) for p in parts] == [10, 10, 20, 20, 30]
    assert len(writer.buffer) == 5 and writer.size == 95


def test_the_cache_keeps_entries_used_in_the_last_minutes_even_past_its_size(tmp_path):
    cache = LocalCache(tmp_path / "cache", max_bytes=1500)
    data = os.urandom(1000)
    first = cache.get("a", "v1", {"data": _expect(data)}, lambda _: iter([data]))
    cache.get("b", "v1", {"data": _expect(data)}, lambda _: iter([data]))
    assert (first / "data").read_bytes() == data  # a process may be reading it still
    os.utime(first / ".entry", (1000, 1000))
    assert cache.evict() == 1 and not first.exists()
