"""Uploads under races and limits, on SQLite and PostgreSQL: a complete that meets a cancel, a second
complete or a new part; parts past the declared size; expiry. Never a 500, never an orphan blob.

Races are made deterministic by running the competing call at a chosen point inside the first
(while it reads the parts, or just before it commits), through the blob store and file checks it
already uses."""

from __future__ import annotations

import hashlib

import openai
import pytest
from sqlalchemy import update

from openft.errors import InvalidRequestError
from openft.services.files import StagedBlob
from openft.settings import Settings
from openft.store.tables import UploadRow

LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
DATA = LINE * 10


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(home=tmp_path / "openft-home", database_url=database_url)


@pytest.fixture
def org(services) -> str:
    return services.organizations.ensure_default().id


def _stored(services) -> set[str]:
    root = services.blobs.root
    return {p.name for p in root.iterdir() if p.name != ".tmp"} | {p.name for p in (root / ".tmp").iterdir()}


def _upload_with_parts(client, *chunks: bytes):
    upload = client.uploads.create(
        bytes=sum(map(len, chunks)), filename="train.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    return upload, [client.uploads.parts.create(upload.id, data=chunk).id for chunk in chunks]


def _while_reading_parts(monkeypatch, services, action) -> list:
    """Run ``action`` once, when a complete first reads a part's bytes; returns what it returned."""
    real = services.blobs.read_chunks
    results: list = []
    fired = False

    def read_chunks(key):
        nonlocal fired
        if not fired:
            fired = True  # before the action: it may read parts itself
            results.append(action())
        yield from real(key)

    monkeypatch.setattr(services.blobs, "read_chunks", read_chunks)
    return results


def _before_commit(monkeypatch, services, action) -> list:
    """Run ``action`` once, after a complete assembled the file and before it commits."""
    real = services.files.jsonl_problem
    results: list = []
    fired = False

    def jsonl_problem(key):
        nonlocal fired
        if not fired:
            fired = True
            results.append(action())
        return real(key)

    monkeypatch.setattr(services.files, "jsonl_problem", jsonl_problem)
    return results


def _stage(services, data: bytes) -> StagedBlob:
    key = "part_raced" + hashlib.md5(data).hexdigest()[:8]
    size, sha256 = services.blobs.write(key, [data])
    return StagedBlob(key=key, bytes=size, sha256=sha256)


def test_complete_while_it_is_being_cancelled_answers_400(client, services, org, monkeypatch):
    upload, parts = _upload_with_parts(client, DATA[:500], DATA[500:])
    cancelled = _while_reading_parts(monkeypatch, services, lambda: services.uploads.cancel(org, upload.id))
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.complete(upload.id, part_ids=parts)
    assert cancelled[0].status == "cancelled"
    assert raised.value.param == "upload_id" and "cancelled" in raised.value.message
    assert client.files.list().data == [] and _stored(services) == set()


def test_cancel_that_loses_to_a_complete_answers_400(client, services, org, monkeypatch):
    upload, parts = _upload_with_parts(client, DATA)
    _before_commit(monkeypatch, services, lambda: services.uploads.complete(org, upload.id, parts))
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.complete(upload.id, part_ids=parts)
    assert "completed" in raised.value.message
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.cancel(upload.id)
    assert raised.value.param == "upload_id" and "completed" in raised.value.message
    (file,) = client.files.list().data
    assert client.files.content(file.id).content == DATA and _stored(services) == {file.id}


@pytest.mark.parametrize("when", ["while-reading-parts", "before-commit"])
def test_complete_twice_at_once_makes_one_file(client, services, org, monkeypatch, when):
    upload, parts = _upload_with_parts(client, DATA[:300], DATA[300:])
    race = _while_reading_parts if when == "while-reading-parts" else _before_commit
    first = race(monkeypatch, services, lambda: services.uploads.complete(org, upload.id, parts))
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.complete(upload.id, part_ids=parts)
    winner = first[0].file
    assert raised.value.param == "upload_id" and f"Its file is {winner.id}" in raised.value.message
    assert [f.id for f in client.files.list().data] == [winner.id]
    assert client.files.content(winner.id).content == DATA
    assert _stored(services) == {winner.id}  # parts and the loser's assembled copy are gone


def test_part_added_while_completing_is_refused_and_its_blob_removed(client, services, org, monkeypatch):
    upload, parts = _upload_with_parts(client, DATA)
    staged = _stage(services, LINE)

    def add_part():
        with pytest.raises(InvalidRequestError) as refused:
            services.uploads.add_part(org, upload.id, staged)
        return refused.value

    refused = _before_commit(monkeypatch, services, add_part)
    done = client.uploads.complete(upload.id, part_ids=parts)
    assert refused[0].param == "data" and "past the" in refused[0].message
    assert _stored(services) == {done.file.id}


def test_part_added_after_complete_is_refused_and_leaves_no_blob(client, services, org):
    upload, parts = _upload_with_parts(client, DATA)
    done = client.uploads.complete(upload.id, part_ids=parts)
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.parts.create(upload.id, data=LINE)
    assert raised.value.param == "upload_id" and "completed" in raised.value.message
    # The same refusal when the part was already read (the check that races a complete).
    with pytest.raises(InvalidRequestError) as refused:
        services.uploads.add_part(org, upload.id, _stage(services, LINE))
    assert "completed" in refused.value.message
    assert _stored(services) == {done.file.id}


def test_parts_beyond_the_declared_bytes_answer_400(client, services):
    upload = client.uploads.create(
        bytes=len(DATA), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    first = client.uploads.parts.create(upload.id, data=DATA[:400])
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.parts.create(upload.id, data=DATA)  # only len(DATA) - 400 bytes of room left
    assert raised.value.param == "data" and f"{len(DATA) - 400} bytes" in raised.value.message
    assert _stored(services) == {first.id}
    rest = client.uploads.parts.create(upload.id, data=DATA[400:])
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.parts.create(upload.id, data=b"x")  # full: refused before reading the part
    assert raised.value.param == "data" and f"{len(DATA)} bytes it declared" in raised.value.message
    done = client.uploads.complete(upload.id, part_ids=[first.id, rest.id])
    assert client.files.content(done.file.id).content == DATA and _stored(services) == {done.file.id}


def test_part_over_the_part_limit_answers_413(client, services):
    services.settings = services.settings.with_(max_part_bytes=100)
    upload = client.uploads.create(
        bytes=len(DATA), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    with pytest.raises(openai.APIStatusError) as raised:
        client.uploads.parts.create(upload.id, data=DATA[:101])
    assert raised.value.status_code == 413 and "at most 100 bytes" in raised.value.message
    assert _stored(services) == set()


def test_upload_over_the_total_limit_answers_400(client, services):
    services.settings = services.settings.with_(max_upload_bytes=1000)
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.create(bytes=1001, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    assert raised.value.param == "bytes" and "1000" in raised.value.message


def test_expired_upload_refuses_parts_and_complete(client, services):
    upload, parts = _upload_with_parts(client, DATA)
    with services.db.transaction() as session:
        session.execute(update(UploadRow).where(UploadRow.id == upload.id).values(expires_at=0))
    for call in (
        lambda: client.uploads.parts.create(upload.id, data=LINE),
        lambda: client.uploads.complete(upload.id, part_ids=parts),
        lambda: client.uploads.cancel(upload.id),
    ):
        with pytest.raises(openai.BadRequestError) as raised:
            call()
        assert raised.value.param == "upload_id" and "expired" in raised.value.message
    assert client.files.list().data == []


def test_complete_that_meets_the_expiry_before_commit_answers_400(client, services, monkeypatch):
    upload, parts = _upload_with_parts(client, DATA)

    def expire():
        with services.db.transaction() as session:
            session.execute(update(UploadRow).where(UploadRow.id == upload.id).values(expires_at=0))

    _before_commit(monkeypatch, services, expire)
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.complete(upload.id, part_ids=parts)
    assert "expired" in raised.value.message
    assert client.files.list().data == [] and _stored(services) == set(parts)
