"""The Files API through the official SDK: create, list, retrieve, content, delete, and refusals."""

from __future__ import annotations

import io

import openai
import pytest
from stored import stored_blobs

JSONL = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 3


@pytest.fixture
def settings(settings_on_every_storage):
    return settings_on_every_storage


def test_create_fine_tune_file_returns_processed_file_object(client):
    created = client.files.create(file=("train.jsonl", JSONL), purpose="fine-tune")
    assert created.id.startswith("file-")
    assert (created.object, created.purpose, created.filename) == ("file", "fine-tune", "train.jsonl")
    assert created.bytes == len(JSONL)
    assert created.status == "processed"
    assert created.status_details is None
    assert created.expires_at is None


def test_create_from_raw_bytes_is_judged_by_content_not_name(client):
    created = client.files.create(
        file=io.BytesIO(b'\n\n{"prompt": "a", "completion": "b"}\n'), purpose="fine-tune"
    )
    assert created.status == "processed"


@pytest.mark.parametrize(
    "content",
    [b"hello, this is plain text\n", b"[1, 2, 3]\n", b"", b"\n\n  \n", b"\xff\xfe\x00binary"],
    ids=["text", "json-array", "empty", "blank", "binary"],
)
def test_create_fine_tune_file_that_is_not_jsonl_answers_400(client, services, content):
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("train.jsonl", content), purpose="fine-tune")
    assert "Invalid file format for Fine-Tuning API. Must be .jsonl" in caught.value.message
    assert caught.value.param == "file"
    assert stored_blobs(services) == set()


def test_create_with_other_purpose_keeps_any_content(client):
    created = client.files.create(file=("notes.txt", b"not json at all"), purpose="user_data")
    assert client.files.content(created.id).content == b"not json at all"


def test_create_with_unknown_purpose_answers_400_param_purpose(client, services):
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("a.jsonl", JSONL), purpose="fine-tune-results")  # type: ignore[arg-type]
    assert caught.value.param == "purpose"
    assert caught.value.type == "invalid_request_error"
    assert "fine-tune-results" in caught.value.message
    assert client.files.list().data == []


def test_create_without_file_answers_400_param_file(http):
    response = http.post("/v1/files", data={"purpose": "fine-tune"}, files={"other": ("x", b"y")})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


def test_create_larger_than_limit_answers_413(app, client):
    app.state.services.settings = app.state.services.settings.with_(max_file_bytes=1000)
    app.state.services.__dict__.pop("files", None)  # rebuild FileService with the new limit
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", b'{"a": 1}\n' * 200), purpose="fine-tune")
    assert caught.value.status_code == 413
    assert "1000 bytes" in caught.value.message
    assert stored_blobs(app.state.services) == set()


def test_create_with_expires_after_sets_expires_at(client):
    created = client.files.create(
        file=("a.jsonl", JSONL), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert created.expires_at == created.created_at + 3600


def test_create_with_expiry_out_of_range_answers_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(
            file=("a.jsonl", JSONL),
            purpose="fine-tune",
            expires_after={"anchor": "created_at", "seconds": 10},
        )
    assert caught.value.param == "expires_after.seconds"


def test_retrieve_and_content_return_the_identical_object_and_bytes(client):
    payload = bytes(range(256)) * 5000  # > 1 MiB, so content streams in several chunks
    created = client.files.create(file=("blob.bin", payload), purpose="user_data")
    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == payload


def test_result_files_are_downloadable_unchanged(client, services):
    org = services.auth.default_organization_id()
    csv = b"step,train_loss\n1,2.5\n"
    row = services.files.create_from_bytes(org, "step_metrics.csv", "fine-tune-results", csv)
    assert client.files.retrieve(row.id).purpose == "fine-tune-results"
    assert client.files.content(row.id).content == csv
    assert services.files.local_path(row).read_bytes() == csv


def test_delete_removes_row_and_blob_then_404(client, services):
    created = client.files.create(file=("a.jsonl", JSONL), purpose="fine-tune")
    assert services.blobs.exists(created.id)
    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    assert not services.blobs.exists(created.id)
    for call in (client.files.retrieve, client.files.delete, client.files.content):
        with pytest.raises(openai.NotFoundError) as caught:
            call(created.id)
        assert (
            caught.value.message.endswith(f"No such File object: {created.id}")
            or created.id in caught.value.message
        )
        assert caught.value.param == "id"


def test_unknown_file_answers_404_no_such_file(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.files.retrieve("file-doesnotexist")
    assert caught.value.body["message"] == "No such File object: file-doesnotexist"
    assert caught.value.param == "id"
    assert caught.value.code is None


@pytest.fixture
def many_files(services):
    """55 files straight through the service (fast), alternating purposes; oldest first."""
    org = services.auth.default_organization_id()
    purposes = ["fine-tune", "user_data"]
    return [
        services.files.create_from_bytes(org, f"f{i}.jsonl", purposes[i % 2], b'{"i": %d}\n' % i).id
        for i in range(55)
    ]


def test_list_defaults_to_newest_first_with_cursor_fields(client, many_files):
    page = client.files.list()
    assert [f.id for f in page.data] == many_files[::-1]
    assert page.first_id == many_files[-1]
    assert page.last_id == many_files[0]
    assert page.has_more is False


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_list_paginates_over_every_file_exactly_once(client, many_files, order):
    seen = [f.id for f in client.files.list(limit=7, order=order)]  # auto-pagination follows `after`
    assert seen == (many_files if order == "asc" else many_files[::-1])
    first = client.files.list(limit=7, order=order)
    assert first.has_more is True and len(first.data) == 7


def test_list_after_the_last_file_is_an_empty_page(client, many_files):
    page = client.files.list(after=many_files[0], order="desc")
    assert page.data == [] and page.has_more is False
    assert page.first_id is None and page.last_id is None


def test_list_filters_by_purpose(client, many_files):
    ids = [f.id for f in client.files.list(purpose="user_data", limit=4)]
    assert ids == many_files[1::2][::-1]


def test_list_with_limit_zero_answers_400(client, many_files):
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.list(limit=0)
    assert caught.value.param == "limit" and "0" in caught.value.message


def test_list_with_limit_over_10000_answers_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.list(limit=10001)
    assert caught.value.param == "limit"


def test_list_with_bad_order_answers_400_param_order(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.list(order="sideways")  # type: ignore[arg-type]
    assert caught.value.param == "order"
