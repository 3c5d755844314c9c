"""SQLite: read-only requests do not take the write lock; write transactions still take it at BEGIN."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import text

from openft.store.db import Database

TRAIN = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 10


def _path(database: Database) -> str:
    return database.url.split("///", 1)[1]


@contextmanager
def _writer_holding_the_lock(database: Database) -> Iterator[sqlite3.Connection]:
    """Another process's writer in the middle of a transaction: it holds SQLite's write lock."""
    other = sqlite3.connect(_path(database), isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE organizations SET created_at = created_at")
        yield other
    finally:
        other.execute("ROLLBACK")
        other.close()


def _lock_is_free(database: Database) -> bool:
    probe = sqlite3.connect(_path(database), isolation_level=None, timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        probe.close()


def test_read_requests_proceed_while_a_writer_holds_the_lock(client, services):
    training = client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=training.id)

    with _writer_holding_the_lock(services.db):
        # Before: each of these opened with BEGIN IMMEDIATE and queued behind the writer (30 s
        # busy timeout, then a 500).
        assert [f.id for f in client.files.list().data] == [training.id]
        assert client.files.retrieve(training.id).bytes == len(TRAIN)
        assert client.files.content(training.id).content == TRAIN
        assert client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
        assert [j.id for j in client.fine_tuning.jobs.list().data] == [job.id]
        assert len(client.fine_tuning.jobs.list_events(job.id).data) == 2
        assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []
        assert "SmolLM2-135M-Instruct" in [m.id for m in client.models.list().data]


def test_read_transaction_leaves_the_write_lock_free(services):
    with services.db.read() as session:
        session.execute(text("SELECT count(*) FROM files")).scalar()
        assert _lock_is_free(services.db)


def test_write_transaction_takes_the_write_lock_at_begin(services):
    with services.db.transaction() as session:
        # Nothing written yet: the lock is taken by BEGIN IMMEDIATE, so a compare-and-set that
        # reads first cannot interleave with another writer.
        session.execute(text("SELECT count(*) FROM files")).scalar()
        assert not _lock_is_free(services.db)
    assert _lock_is_free(services.db)


@pytest.fixture
def settings(settings):
    assert settings.is_sqlite
    return settings
