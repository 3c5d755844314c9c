"""API keys and organizations: 401s, key hashing, and isolation between organizations."""

from __future__ import annotations

import hashlib

import openai
import pytest
from sqlalchemy import select

from openft.store.tables import ApiKeyRow, OrganizationRow

JSONL = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def test_without_keys_every_request_is_the_default_organization(client, services):
    created = client.files.create(file=("a.jsonl", JSONL), purpose="fine-tune")
    default = services.organizations.ensure_default()
    assert default.name == "personal"
    assert services.files.get(default.id, created.id).id == created.id


def test_create_key_stores_only_its_sha256(services):
    assert services.organizations.has_keys() is False
    key = services.organizations.create_key("Acme Corp")
    assert services.organizations.has_keys() is True
    assert key.startswith("sk-")
    with services.db.transaction() as session:
        rows = session.scalars(select(ApiKeyRow)).all()
        org = session.scalar(select(OrganizationRow).where(OrganizationRow.name == "acme-corp"))
    assert [r.key_hash for r in rows] == [hashlib.sha256(key.encode()).hexdigest()]
    assert org is not None and org.id.startswith("org-") and rows[0].organization_id == org.id


def test_missing_key_answers_401_once_a_key_exists(services, client, http):
    services.organizations.create_key("acme")
    with pytest.raises(openai.AuthenticationError) as caught:
        client.files.list(extra_headers={"Authorization": openai.omit})
    assert caught.value.body["message"].startswith("You didn't provide an API key.")
    assert caught.value.code is None
    raw = http.get("/v1/files")
    assert raw.status_code == 401 and "authorization" not in raw.request.headers


def test_unknown_key_answers_401_invalid_api_key_with_masked_key(services, make_client):
    services.organizations.create_key("acme")
    wrong = "sk-openft-this-key-does-not-exist-wxyz"
    with pytest.raises(openai.AuthenticationError) as caught:
        make_client(api_key=wrong).files.list()
    assert caught.value.code == "invalid_api_key"
    message = caught.value.body["message"]
    assert "sk-...wxyz" in message and wrong not in message


def test_valid_key_is_accepted_with_its_organization(services, make_client):
    key = services.organizations.create_key("acme")
    created = make_client(api_key=key).files.create(file=("a.jsonl", JSONL), purpose="fine-tune")
    acme = services.organizations.ensure("acme")
    assert services.files.get(acme.id, created.id).organization_id == acme.id


def test_organizations_never_see_each_others_files(services, make_client):
    alice = make_client(api_key=services.organizations.create_key("alice"))
    bob = make_client(api_key=services.organizations.create_key("bob"))
    secret = alice.files.create(file=("a.jsonl", JSONL), purpose="fine-tune")
    for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call(secret.id)
        assert caught.value.body["message"] == f"No such File object: {secret.id}"
    assert bob.files.list().data == []
    with pytest.raises(openai.BadRequestError):
        bob.files.list(after=secret.id)
    assert alice.files.retrieve(secret.id).id == secret.id


def test_organizations_never_touch_each_others_uploads(services, make_client):
    alice = make_client(api_key=services.organizations.create_key("alice"))
    bob = make_client(api_key=services.organizations.create_key("bob"))
    upload = alice.uploads.create(
        bytes=len(JSONL), filename="a.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    with pytest.raises(openai.NotFoundError):
        bob.uploads.parts.create(upload.id, data=JSONL)
    with pytest.raises(openai.NotFoundError):
        bob.uploads.cancel(upload.id)
    part = alice.uploads.parts.create(upload.id, data=JSONL)
    with pytest.raises(openai.NotFoundError):
        bob.uploads.complete(upload.id, part_ids=[part.id])
    assert alice.uploads.complete(upload.id, part_ids=[part.id]).status == "completed"


def test_ensure_is_idempotent_and_slugs_the_name(services):
    first = services.organizations.ensure("My Team")
    assert first.name == "my-team"
    assert services.organizations.ensure("my-team").id == first.id
