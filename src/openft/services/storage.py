"""Storage sweeps: expired uploads and their parts, expired files, orphan blobs, the temporaries
of crashed writes and (in object storage) the leftover objects of ended jobs, removed safely while
other API replicas share the database and the storage.

Safety comes from the database, not from timing: a row is removed by a compare-and-set (one replica
wins, the others see rowcount 0) and its blob is deleted only by the winner, after the commit. A
blob with no row at all is an orphan only once it is older than ``ORPHAN_GRACE_SECONDS``: a blob is
written before its row is inserted (a request in flight on another replica), but seconds before,
never an hour.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, or_, select, update

from openft.domain.lifecycle import TERMINAL, JobStatus
from openft.store import uploads as upload_store
from openft.store.artifacts import S3Artifacts
from openft.store.blobs import STALE_TEMP_SECONDS
from openft.store.tables import FileRow, JobRow, UploadPartRow, UploadRow

if TYPE_CHECKING:
    from openft.services.context import Services

log = logging.getLogger(__name__)

ORPHAN_GRACE_SECONDS = STALE_TEMP_SECONDS
BATCH = 500


@dataclass(frozen=True)
class SweepReport:
    expired_uploads: int = 0
    upload_parts: int = 0
    expired_files: int = 0
    orphan_blobs: int = 0
    temporaries: int = 0
    orphan_artifacts: int = 0

    @property
    def total(self) -> int:
        return (
            self.expired_uploads
            + self.upload_parts
            + self.expired_files
            + self.orphan_blobs
            + self.temporaries
            + self.orphan_artifacts
        )


class StorageService:
    def __init__(self, services: Services) -> None:
        self.db = services.db
        self.blobs = services.blobs
        self.artifacts = services.artifacts
        self.runtime = services.runtime

    def sweep(self, now: float | None = None) -> SweepReport:
        """One pass over everything; safe to run on every replica at once."""
        now = time.time() if now is None else now
        uploads, parts = self.sweep_expired_uploads(int(now))
        report = SweepReport(
            expired_uploads=uploads,
            upload_parts=parts,
            expired_files=self.sweep_expired_files(int(now)),
            orphan_blobs=self.sweep_orphan_blobs(now),
            temporaries=self.blobs.clean_temp(now=now),
            orphan_artifacts=self.sweep_orphan_artifacts(now),
        )
        if report.total:
            log.info("storage sweep: %s", report)
        return report

    def sweep_expired_uploads(self, now: int) -> tuple[int, int]:
        """Mark pending uploads past their expiry ``expired`` and remove their parts."""
        with self.db.read() as session:
            candidates = list(
                session.scalars(
                    select(UploadRow.id)
                    .where(UploadRow.status == "pending", UploadRow.expires_at <= now)
                    .limit(BATCH)
                )
            )
        uploads = parts = 0
        for upload_id in candidates:
            with self.db.transaction() as session:
                # The same compare-and-set as complete and cancel: exactly one of them wins.
                moved = session.execute(
                    update(UploadRow)
                    .where(
                        UploadRow.id == upload_id, UploadRow.status == "pending", UploadRow.expires_at <= now
                    )
                    .values(status="expired")
                ).rowcount
                if not moved:
                    continue
                removed = upload_store.parts(session, upload_id)
                upload_store.delete_parts(session, upload_id)
            for part in removed:
                self.blobs.delete(part.blob_key)
            uploads += 1
            parts += len(removed)
        return uploads, parts

    def sweep_expired_files(self, now: int) -> int:
        """Delete files past ``expires_at``, except those an unfinished job still reads."""
        in_use = (
            select(JobRow.pk)
            .where(
                JobRow.status.notin_([s.value for s in TERMINAL]),
                or_(JobRow.training_file == FileRow.id, JobRow.validation_file == FileRow.id),
            )
            .exists()
        )
        expired = (FileRow.expires_at.is_not(None), FileRow.expires_at <= now, ~in_use)
        with self.db.read() as session:
            candidates = list(
                session.execute(select(FileRow.id, FileRow.blob_key).where(*expired).limit(BATCH))
            )
        removed = 0
        for file_id, blob_key in candidates:
            with self.db.transaction() as session:
                deleted = session.execute(delete(FileRow).where(FileRow.id == file_id, *expired)).rowcount
            if deleted:
                self.blobs.delete(blob_key)
                removed += 1
        return removed

    def sweep_orphan_blobs(self, now: float) -> int:
        """Delete blobs that no file or upload part names and that are older than the grace period
        (a crash between a commit and the blob's deletion, or between a blob and its row)."""
        cutoff = now - ORPHAN_GRACE_SECONDS
        old = set(self.blobs.keys_older_than(cutoff))
        removed = 0
        names = sorted(old)
        for start in range(0, len(names), BATCH):
            batch = names[start : start + BATCH]
            with self.db.read() as session:
                known = set(session.scalars(select(FileRow.blob_key).where(FileRow.blob_key.in_(batch))))
                known |= set(
                    session.scalars(select(UploadPartRow.blob_key).where(UploadPartRow.blob_key.in_(batch)))
                )
            for name in batch:
                if name not in known:
                    self.blobs.delete(name)
                    removed += 1
        return removed

    def sweep_orphan_artifacts(self, now: float) -> int:
        """Object storage: delete the objects of ended jobs (succeeded, failed, cancelled, or gone)
        that no row names, older than the grace period: checkpoints the final model replaced, trees
        of deleted models whose removal was interrupted, torn uploads of crashed workers. A job that
        may still run (queued, running, paused) is left to its worker. Locally the training process
        and model deletion tidy the directories themselves."""
        if not isinstance(self.artifacts, S3Artifacts):
            return 0
        cutoff = datetime.fromtimestamp(now - ORPHAN_GRACE_SECONDS, UTC)
        removed = 0
        for job_id in self.artifacts.job_ids():
            with self.db.read() as session:
                status = session.scalar(select(JobRow.status).where(JobRow.id == job_id))
            if status is not None and JobStatus(status) not in TERMINAL:
                continue
            # Read after the status: an ended job's rows no longer change, so nothing kept is missed.
            keep = self.runtime.artifact_keys(job_id) if status is not None else set()
            removed += self.artifacts.sweep_job(job_id, keep, cutoff)
        return removed
