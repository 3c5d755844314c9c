"""An API restart mid-upload: sent parts survive it, a ``complete`` killed mid-concatenation leaves
no file (and no half blob under a real name), and the upload can be completed afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from fleet import process_env, wait_for
from ledger import examples, leftovers
from sqlalchemy import select
from starlette.testclient import TestClient

from openft.api.app import create_app
from openft.store.tables import FileRow, UploadRow

pytestmark = pytest.mark.postgres
DATA = examples(40)
CRASHING_COMPLETE = Path(__file__).with_name("crashing_complete.py")


class _Api:
    """One life of the API: a fresh app (as after a restart) and an SDK client on it."""

    def __init__(self, settings) -> None:
        self.app = create_app(settings)
        self.services = self.app.state.services
        self.http = TestClient(self.app, base_url="http://testserver")
        self.client = openai.OpenAI(
            base_url="http://testserver/v1", api_key="t", max_retries=0, http_client=self.http
        )

    def die(self) -> None:
        # No graceful shutdown work exists to skip: dropping the app is what a crash leaves behind.
        self.http.close()
        self.services.close()

    def upload(self) -> tuple[str, list[str]]:
        upload = self.client.uploads.create(
            bytes=len(DATA), filename="train.jsonl", mime_type="text/jsonl", purpose="fine-tune"
        )
        half = len(DATA) // 2
        parts = [self.client.uploads.parts.create(upload.id, data=d) for d in (DATA[:half], DATA[half:])]
        return upload.id, [p.id for p in parts]

    def upload_row(self, upload_id: str) -> UploadRow:
        with self.services.db.transaction() as session:
            row = session.scalar(select(UploadRow).where(UploadRow.id == upload_id))
            assert row is not None
            return row

    def file_rows(self) -> list[FileRow]:
        with self.services.db.transaction() as session:
            return list(session.scalars(select(FileRow)))

    def visible_blobs(self) -> set[str]:
        return {p.name for p in self.services.settings.files_dir.iterdir() if p.is_file()}


def test_sent_parts_survive_a_restart_before_complete_and_no_file_appears(settings):
    first = _Api(settings)
    upload_id, part_ids = first.upload()
    first.die()

    second = _Api(settings)
    assert second.upload_row(upload_id).status == "pending"
    assert list(second.client.files.list()) == []
    assert second.visible_blobs() == set(part_ids)

    done = second.client.uploads.complete(upload_id, part_ids=part_ids)
    assert done.status == "completed"
    assert second.client.files.content(done.file.id).content == DATA
    assert leftovers(second.services) == []
    second.die()


def test_complete_killed_mid_concatenation_leaves_no_half_file(settings, tmp_path):
    first = _Api(settings)
    upload_id, part_ids = first.upload()
    organization_id = first.upload_row(upload_id).organization_id
    first.die()

    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, str(CRASHING_COMPLETE), organization_id, upload_id, str(marker), *part_ids],
        env=process_env(settings),
    )
    try:
        wait_for(marker.exists, timeout=60, what="the concatenation to start")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    temp_dir = settings.files_dir / ".tmp"
    (half_file,) = temp_dir.iterdir()  # the half file exists only under the temporary name

    second = _Api(settings)
    assert second.upload_row(upload_id).status == "pending"
    assert second.file_rows() == [] and list(second.client.files.list()) == []
    assert second.visible_blobs() == set(part_ids)
    # A fresh temporary may belong to another replica writing on the same shared disk: kept.
    assert half_file.exists()
    second.die()

    stale = time.time() - 2 * 3600
    os.utime(half_file, (stale, stale))
    third = _Api(settings)  # the next start sweeps temporaries nobody touched for an hour
    assert not half_file.exists()
    done = third.client.uploads.complete(upload_id, part_ids=part_ids)
    assert third.client.files.content(done.file.id).content == DATA
    assert leftovers(third.services) == []
    third.die()
