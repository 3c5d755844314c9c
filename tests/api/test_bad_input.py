"""Bad input is a 400 (or 413) that names the problem, never a 500, and stores nothing: on SQLite
and PostgreSQL, through the SDK or raw HTTP."""

from __future__ import annotations

import json

import openai
import pytest

from openft.settings import DEFAULT_BASE_MODEL, Settings

LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
DATA = LINE * 10
DEEP = b"[" * 100_000 + b"]" * 100_000
HP = "method.supervised.hyperparameters"


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(home=tmp_path / "openft-home", database_url=database_url)


def _stored(services) -> set[str]:
    """Blob names on disk, temporaries included: a refused request leaves none behind."""
    root = services.blobs.root
    return {p.name for p in root.iterdir() if p.name != ".tmp"} | {p.name for p in (root / ".tmp").iterdir()}


def _error(response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def _multipart(boundary: bytes, *parts: tuple[bytes, bytes], close: bool = True) -> bytes:
    body = b""
    for headers, value in parts:
        body += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + value + b"\r\n"
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


PURPOSE = (b'Content-Disposition: form-data; name="purpose"', b"fine-tune")


def _file_part(data: bytes, filename: bytes = b"train.jsonl") -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"', data


def _post_form(http, body: bytes, boundary: bytes, path: str = "/v1/files"):
    return http.post(
        path, content=body, headers={"content-type": f"multipart/form-data; boundary={boundary.decode()}"}
    )


# -- multipart ----------------------------------------------------------------------------------


def test_well_formed_raw_multipart_is_stored(client, http, services):
    # The control for the refusals below: the same helper with nothing wrong stores the file.
    response = _post_form(http, _multipart(b"b0undary", PURPOSE, _file_part(DATA)), b"b0undary")
    assert response.status_code == 200, response.text
    assert client.files.content(response.json()["id"]).content == DATA


@pytest.mark.parametrize("length", [257, 5000])
def test_multipart_boundary_over_256_characters_answers_400(client, http, services, length):
    boundary = b"x" * length
    error = _error(_post_form(http, _multipart(boundary, PURPOSE, _file_part(DATA)), boundary))
    assert "boundary" in error["message"] and str(length) in error["message"]
    assert client.files.list().data == [] and _stored(services) == set()


@pytest.mark.parametrize(
    "body",
    [
        _multipart(b"xx", PURPOSE, _file_part(DATA), close=False)[: -len(b"\r\n")],  # cut inside the file
        _multipart(b"xx", PURPOSE, _file_part(DATA), close=False),  # file ended, form never closed
        _multipart(b"xx", _file_part(DATA), PURPOSE, close=False)[:-200],  # cut mid-file, purpose never sent
    ],
    ids=["inside-file", "after-file", "mid-file"],
)
def test_multipart_without_closing_boundary_answers_400_and_stores_nothing(client, http, services, body):
    error = _error(_post_form(http, body, b"xx"))
    assert "closing boundary" in error["message"]
    assert client.files.list().data == [] and _stored(services) == set()


def test_multipart_filename_with_nul_or_too_long_answers_400(client, http, services):
    for filename, problem in ((b"a\x00.jsonl", "NUL"), (b"a" * 1025 + b".jsonl", "1031 characters")):
        error = _error(_post_form(http, _multipart(b"xx", PURPOSE, _file_part(DATA, filename)), b"xx"))
        assert error["param"] == "file" and problem in error["message"]
    assert client.files.list().data == [] and _stored(services) == set()


def test_multipart_fields_beyond_a_megabyte_answer_400(client, http, services):
    fields = [(f'Content-Disposition: form-data; name="f{i}"'.encode(), b"v" * 60_000) for i in range(20)]
    error = _error(_post_form(http, _multipart(b"xx", _file_part(DATA), *fields), b"xx"))
    assert "fields" in error["message"]
    assert client.files.list().data == [] and _stored(services) == set()


# -- deeply nested JSON -------------------------------------------------------------------------


def test_file_whose_first_line_nests_too_deep_answers_400(client, services):
    for data in (b'{"messages": ' + DEEP + b"}\n" + DATA, DEEP + b"\n"):
        with pytest.raises(openai.BadRequestError) as raised:
            client.files.create(file=("train.jsonl", data), purpose="fine-tune")
        assert raised.value.param == "file" and "128 levels" in raised.value.message
    assert client.files.list().data == [] and _stored(services) == set()


def test_upload_whose_first_line_nests_too_deep_answers_400_and_stays_pending(client, services):
    data = b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}\n"
    upload = client.uploads.create(
        bytes=len(data), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    part = client.uploads.parts.create(upload.id, data=data)
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.complete(upload.id, part_ids=[part.id])
    assert raised.value.param == "part_ids" and "128 levels" in raised.value.message
    assert _stored(services) == {part.id}  # the part stays; the upload can still be cancelled
    assert client.uploads.cancel(upload.id).status == "cancelled"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/fine_tuning/jobs", "/v1/uploads"])
def test_json_body_nested_too_deep_answers_400(http, path):
    body = b'{"model": "x", "messages": ' + DEEP + b"}"
    error = _error(http.post(path, content=body, headers={"content-type": "application/json"}))
    assert "128 levels" in error["message"]


def test_json_nesting_up_to_the_limit_is_accepted(client, services):
    training = client.files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    nested = "x"
    for _ in range(120):
        nested = [nested]
    # Nested, but within the limit: refused for what it is (metadata values are strings), not its depth.
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(
            model=DEFAULT_BASE_MODEL, training_file=training.id, metadata={"k": nested}
        )
    assert raised.value.param == "metadata" and "must be a string" in raised.value.message


# -- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lora_alpha", "Infinity"),
        ("lora_alpha", "1e308"),
        ("learning_rate_multiplier", "1e308"),
        ("learning_rate_multiplier", "NaN"),
        ("learning_rate_multiplier", "-Infinity"),
        ("lora_dropout", "NaN"),
        ("n_epochs", "1e308"),
    ],
)
def test_non_finite_or_absurd_hyperparameters_answer_400_at_create(client, http, key, value):
    training = client.files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    body = (
        f'{{"model": "{DEFAULT_BASE_MODEL}", "training_file": "{training.id}", "method": {{"type": "supervised", '
        f'"supervised": {{"hyperparameters": {{"{key}": {value}}}}}}}}}'
    )
    error = _error(http.post("/v1/fine_tuning/jobs", content=body.encode()))
    if value in ("NaN", "Infinity", "-Infinity"):
        assert "NaN and Infinity are not JSON numbers" in error["message"]
    else:
        assert error["param"] == f"{HP}.{key}" and repr(float(value)) in error["message"]
    assert client.fine_tuning.jobs.list().data == []


def test_finite_hyperparameters_at_their_bounds_are_accepted(client):
    training = client.files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    method = {
        "type": "supervised",
        "supervised": {"hyperparameters": {"learning_rate_multiplier": 100, "lora_alpha": 65536}},
    }
    job = client.fine_tuning.jobs.create(model=DEFAULT_BASE_MODEL, training_file=training.id, method=method)
    assert job.method.supervised.hyperparameters.learning_rate_multiplier == 100


# -- NUL characters and over-long values (PostgreSQL text cannot hold a NUL) ----------------------


def test_nul_in_ids_cursors_and_filters_answers_400(client, http):
    training = client.files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=DEFAULT_BASE_MODEL, training_file=training.id, metadata={"k": "v"}
    )
    cases = [
        ("GET", "/v1/files/file-%00abc", None),
        ("DELETE", "/v1/files/file-%00abc", None),
        ("GET", "/v1/files/file-%00abc/content", None),
        ("GET", "/v1/files?after=file-%00", "after"),
        ("GET", "/v1/files?purpose=fine-tune%00", "purpose"),
        ("GET", f"/v1/fine_tuning/jobs/{job.id}%00", None),
        ("POST", f"/v1/fine_tuning/jobs/{job.id}%00/cancel", None),
        ("GET", f"/v1/fine_tuning/jobs/{job.id}/events?after=ftevent-%00", "after"),
        ("GET", f"/v1/fine_tuning/jobs/{job.id}/checkpoints?after=%00", "after"),
        ("GET", "/v1/fine_tuning/jobs?after=%00", "after"),
        ("GET", "/v1/fine_tuning/jobs?metadata[k%00]=v", "metadata[k%00]"),
        ("GET", "/v1/fine_tuning/jobs?metadata[k]=v%00", "metadata[k]"),
        ("GET", "/v1/models/ft:x%00", None),
        ("DELETE", "/v1/models/ft:x%00", None),
        ("POST", "/v1/uploads/upload_%00/cancel", None),
    ]
    for method, url, param in cases:
        error = _error(http.request(method, url))
        assert "NUL" in error["message"] and error["param"] == param, (method, url, error)
    # Nothing broke: the same lists still answer.
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"k": "v"}).data] == [job.id]
    assert client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/fine_tuning/jobs",
            {"model": DEFAULT_BASE_MODEL, "training_file": "T", "metadata": {"k\x00": "v"}},
            "metadata",
        ),
        (
            "/v1/fine_tuning/jobs",
            {"model": DEFAULT_BASE_MODEL, "training_file": "T", "metadata": {"k": "v\x00"}},
            "metadata.k",
        ),
        ("/v1/fine_tuning/jobs", {"model": "ft:\x00", "training_file": "T"}, "model"),
        (
            "/v1/fine_tuning/jobs",
            {"model": DEFAULT_BASE_MODEL, "training_file": "file-\x00"},
            "training_file",
        ),
        (
            "/v1/fine_tuning/jobs",
            {"model": DEFAULT_BASE_MODEL, "training_file": "T", "suffix": "a\x00"},
            "suffix",
        ),
        (
            "/v1/uploads",
            {"filename": "a\x00", "purpose": "fine-tune", "bytes": 1, "mime_type": "text/jsonl"},
            "filename",
        ),
        (
            "/v1/uploads",
            {"filename": "a", "purpose": "fine-tune", "bytes": 1, "mime_type": "\x00"},
            "mime_type",
        ),
        (
            "/v1/chat/completions",
            {"model": DEFAULT_BASE_MODEL, "messages": [{"role": "user", "content": "\x00"}]},
            "messages.0.content",
        ),
    ],
)
def test_nul_in_a_json_body_answers_400_naming_the_field(client, http, path, body, param):
    training = client.files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    raw = json.dumps(body).replace('"T"', json.dumps(training.id)).encode()
    assert b"\\u0000" in raw
    error = _error(http.post(path, content=raw))
    assert error["param"] == param and "NUL" in error["message"]
    assert client.fine_tuning.jobs.list().data == []
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"k": "v"}).data] == []


def test_escaped_backslash_before_u0000_is_text_not_nul(client):
    training = client.files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=DEFAULT_BASE_MODEL, training_file=training.id, metadata={"k": "\\u0000"}
    )
    assert job.metadata == {"k": "\\u0000"}
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"k": "\\u0000"}).data] == [job.id]


@pytest.mark.parametrize(
    ("field", "value", "limit"), [("filename", "a" * 1025, 1024), ("mime_type", "t" * 257, 256)]
)
def test_upload_with_over_long_text_answers_400(client, field, value, limit):
    args = {"bytes": 10, "filename": "t.jsonl", "mime_type": "text/jsonl", "purpose": "fine-tune"}
    with pytest.raises(openai.BadRequestError) as raised:
        client.uploads.create(**(args | {field: value}))
    assert raised.value.param == field and f"at most {limit}" in raised.value.message


@pytest.mark.parametrize("key", ['a"b', "a'b", "a.b", "$.a", "a]b", "ключ"])
def test_metadata_filter_matches_keys_with_quotes_and_path_characters(client, key):
    training = client.files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    wanted = client.fine_tuning.jobs.create(
        model=DEFAULT_BASE_MODEL, training_file=training.id, metadata={key: "yes", "other": "1"}
    )
    client.fine_tuning.jobs.create(model=DEFAULT_BASE_MODEL, training_file=training.id, metadata={key: "no"})
    client.fine_tuning.jobs.create(model=DEFAULT_BASE_MODEL, training_file=training.id)
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={key: "yes"}).data] == [wanted.id]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={key: "yes", "other": "1"}).data] == [
        wanted.id
    ]
    assert client.fine_tuning.jobs.list(metadata={key: "yes", "other": "2"}).data == []


# -- request body limits ------------------------------------------------------------------------


def test_json_body_over_the_limit_answers_413_with_or_without_content_length(client, http, services):
    services.settings = services.settings.with_(max_json_body_bytes=1000)
    body = json.dumps({"filename": "t.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "x" * 2000})
    error = _error(http.post("/v1/uploads", content=body.encode()), 413)
    assert "1000 bytes" in error["message"] and "OPENFT_MAX_JSON_BODY_BYTES" in error["message"]

    def chunked():  # no Content-Length: the limit counts what arrives
        for i in range(0, len(body), 100):
            yield body[i : i + 100].encode()

    error = _error(http.post("/v1/uploads", content=chunked()), 413)
    assert "1000 bytes" in error["message"]
    small = client.uploads.create(bytes=10, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    assert small.status == "pending"


def test_multipart_file_over_the_limit_answers_413_and_stores_nothing(client, services):
    services.settings = services.settings.with_(max_file_bytes=len(DATA) - 1)
    with pytest.raises(openai.APIStatusError) as raised:
        client.files.create(file=("train.jsonl", DATA), purpose="fine-tune")
    assert raised.value.status_code == 413 and raised.value.body["param"] == "file"
    assert client.files.list().data == [] and _stored(services) == set()
