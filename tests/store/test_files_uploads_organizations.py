"""Files, uploads and organizations services on a real database: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from openft.errors import InvalidRequestError, NotFoundError
from openft.services.context import Services
from openft.settings import Settings
from openft.store.blobs import BlobStore
from openft.store.db import Database


@pytest.fixture
def services(database_url, tmp_path):
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    services = Services.build(settings)
    yield services
    services.close()


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


def test_build_is_idempotent_and_keeps_one_default_organization(services, database_url, tmp_path):
    again = Services.build(Settings(home=tmp_path / "home", database_url=database_url))
    try:
        assert again.organizations.ensure_default().id == services.organizations.ensure_default().id
    finally:
        again.close()


def test_file_pages_are_newest_first_by_insertion_not_by_id(services):
    org = services.organizations.ensure("acme").id
    ids = [services.files.create_from_bytes(org, f"{i}.csv", "fine-tune-results", b"x").id for i in range(12)]
    seen, after = [], None
    while True:
        rows, has_more = services.files.list(org, limit=5, after=after)
        seen += [r.id for r in rows]
        if not has_more:
            break
        after = rows[-1].id
    assert seen == ids[::-1]
    asc, _ = services.files.list(org, order="asc", limit=3)
    assert [r.id for r in asc] == ids[:3]


def test_files_are_scoped_to_their_organization(services):
    acme = services.organizations.ensure("acme").id
    other = services.organizations.ensure("other").id
    row = services.files.create_from_bytes(acme, "a.csv", "fine-tune-results", b"a")
    with pytest.raises(NotFoundError):
        services.files.get(other, row.id)
    with pytest.raises(NotFoundError):
        services.files.delete(other, row.id)
    assert services.files.list(other)[0] == []
    services.files.delete(acme, row.id)
    assert not services.files.local_path(row).exists()


def test_staged_fine_tune_file_is_checked_then_recorded(services):
    org = services.organizations.ensure_default().id
    staged = asyncio.run(services.files.stage(_chunks(b'{"a"', b": 1}\n", b'{"a": 2}\n')))
    row = services.files.create(org, staged, filename="t.jsonl", purpose="fine-tune")
    assert row.bytes == staged.bytes == 18
    assert b"".join(services.files.content(org, row.id)) == b'{"a": 1}\n{"a": 2}\n'
    bad = asyncio.run(services.files.stage(_chunks(b"nope\n")))
    with pytest.raises(InvalidRequestError):
        services.files.create(org, bad, filename="t.jsonl", purpose="fine-tune")
    assert not services.blobs.exists(bad.key)


def test_upload_complete_and_cancel_race_has_one_winner(services):
    org = services.organizations.ensure_default().id
    view = services.uploads.create(
        org, filename="t.jsonl", purpose="fine-tune", bytes=9, mime_type="text/jsonl"
    )
    staged = asyncio.run(services.uploads.stage_part(_chunks(b'{"a": 1}\n')))
    part = services.uploads.add_part(org, view.row.id, staged)
    services.uploads.cancel(org, view.row.id)
    with pytest.raises(InvalidRequestError):
        services.uploads.complete(org, view.row.id, [part.id])
    assert services.uploads.get(org, view.row.id).status == "cancelled"
    assert services.files.list(org)[0] == []


def test_create_key_and_authenticate_round_trip(services):
    assert services.auth.authenticate(None) == services.organizations.ensure_default().id
    key = services.organizations.create_key("acme")
    assert services.auth.authenticate(f"Bearer {key}") == services.organizations.ensure("acme").id


def test_services_accepts_a_replacement_service(tmp_path):
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    db = Database(settings.database_url)
    db.migrate()
    services = Services(settings=settings, db=db, blobs=BlobStore(settings.files_dir))
    fake = object()
    services.files = fake  # type: ignore[assignment]
    assert services.files is fake
    assert services.uploads.files is fake  # later services are built from what is there
    db.dispose()
