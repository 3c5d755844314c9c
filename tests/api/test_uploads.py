"""The Uploads API through the official SDK: parts, completion into a File, and every refusal."""

from __future__ import annotations

import hashlib
import time

import openai
import pytest
from stored import stored_blobs

LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
DATA = LINE * 40


@pytest.fixture
def settings(settings_on_every_storage):
    return settings_on_every_storage


def _blob_names(services) -> set[str]:
    return stored_blobs(services)


def _create(client, data=DATA, **overrides):
    args = {"bytes": len(data), "filename": "train.jsonl", "mime_type": "text/jsonl", "purpose": "fine-tune"}
    return client.uploads.create(**(args | overrides))


def test_create_returns_pending_upload_expiring_in_an_hour(client):
    upload = _create(client)
    assert upload.id.startswith("upload_")
    assert (upload.object, upload.status, upload.file) == ("upload", "pending", None)
    assert upload.expires_at - upload.created_at == 3600
    assert upload.bytes == len(DATA)


def test_happy_path_assembles_parts_in_the_given_order(client, services):
    upload = _create(client)
    halves = [DATA[: len(DATA) // 2], DATA[len(DATA) // 2 :]]
    parts = [client.uploads.parts.create(upload.id, data=half) for half in halves]
    assert all(p.object == "upload.part" and p.upload_id == upload.id for p in parts)
    done = client.uploads.complete(
        upload.id, part_ids=[p.id for p in parts], md5=hashlib.md5(DATA).hexdigest()
    )
    assert done.status == "completed"
    assert done.file is not None and done.file.bytes == len(DATA) and done.file.purpose == "fine-tune"
    assert done.file.filename == "train.jsonl"
    assert client.files.content(done.file.id).content == DATA
    assert client.files.retrieve(done.file.id).id == done.file.id
    assert _blob_names(services) == {done.file.id}  # part blobs are gone


def test_upload_file_chunked_helper_round_trips(client, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(DATA)
    done = client.uploads.upload_file_chunked(
        file=path, mime_type="text/jsonl", purpose="fine-tune", part_size=1000
    )
    assert done.status == "completed"
    assert client.files.content(done.file.id).content == DATA


def test_md5_mismatch_answers_400_and_leaves_upload_pending(client, services):
    upload = _create(client)
    part = client.uploads.parts.create(upload.id, data=DATA)
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.complete(upload.id, part_ids=[part.id], md5="0" * 32)
    assert caught.value.param == "md5"
    assert _blob_names(services) == {part.id}
    assert client.uploads.complete(upload.id, part_ids=[part.id]).status == "completed"


def test_byte_count_mismatch_answers_400(client):
    upload = _create(client, bytes=len(DATA) + 1)
    part = client.uploads.parts.create(upload.id, data=DATA)
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.complete(upload.id, part_ids=[part.id])
    assert caught.value.param == "part_ids"
    assert str(len(DATA)) in caught.value.message and str(len(DATA) + 1) in caught.value.message
    assert client.files.list().data == []


def test_part_of_another_upload_answers_400(client):
    mine, other = _create(client), _create(client)
    foreign = client.uploads.parts.create(other.id, data=DATA)
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.complete(mine.id, part_ids=[foreign.id])
    assert caught.value.param == "part_ids"
    assert foreign.id in caught.value.message


def test_cancel_removes_parts_and_refuses_more(client, services):
    upload = _create(client)
    client.uploads.parts.create(upload.id, data=DATA)
    cancelled = client.uploads.cancel(upload.id)
    assert cancelled.status == "cancelled" and cancelled.file is None
    assert _blob_names(services) == set()
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.parts.create(upload.id, data=DATA)
    assert "cancelled" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload.id, part_ids=[])


def test_completed_upload_cannot_be_cancelled(client):
    upload = _create(client)
    part = client.uploads.parts.create(upload.id, data=DATA)
    client.uploads.complete(upload.id, part_ids=[part.id])
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.cancel(upload.id)
    assert "completed" in caught.value.message


def test_expired_upload_refuses_parts_and_completion(client, services, monkeypatch):
    upload = _create(client)
    part = client.uploads.parts.create(upload.id, data=DATA)
    later = time.time() + 3601
    monkeypatch.setattr("openft.services.uploads.time.time", lambda: later)
    for call in (
        lambda: client.uploads.parts.create(upload.id, data=DATA),
        lambda: client.uploads.complete(upload.id, part_ids=[part.id]),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert "expired" in caught.value.message


def test_part_larger_than_limit_answers_413(app, client, services):
    services.settings = services.settings.with_(max_part_bytes=100)
    services.__dict__.pop("uploads", None)
    upload = _create(client)
    with pytest.raises(openai.APIStatusError) as caught:
        client.uploads.parts.create(upload.id, data=DATA)
    assert caught.value.status_code == 413
    assert _blob_names(services) == set()


def test_declared_size_over_8_gb_answers_400_param_bytes(client):
    with pytest.raises(openai.BadRequestError) as caught:
        _create(client, bytes=8 * 1024**3 + 1)
    assert caught.value.param == "bytes"


def test_non_jsonl_fine_tune_upload_is_refused_at_completion(client, services):
    data = b"plain text, not jsonl\n"
    upload = _create(client, data=data)
    part = client.uploads.parts.create(upload.id, data=data)
    with pytest.raises(openai.BadRequestError) as caught:
        client.uploads.complete(upload.id, part_ids=[part.id])
    assert "Must be .jsonl" in caught.value.message
    assert _blob_names(services) == {part.id}


def test_unknown_upload_answers_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.uploads.cancel("upload_nope")
    assert caught.value.param == "upload_id"
